"""Scoring with nlb_tools' `evaluate`, the leaderboard table, and array comparison.

`score_submission` runs the scorer EvalAI ran (nlb_tools.evaluation.evaluate) after checking
both inputs, and flattens its nested result into one row per dataset:

    {"group": "mc_maze_small", "dataset": "mc_maze_small", "bin_ms": 5,
     "co-bps": ..., "vel R2": ..., "psth R2": ..., "fp-bps": ...}

(`tp corr` instead of `vel R2` for dmfc_rsg; no `psth R2` for mc_rtt). The scaling datasets,
which the scorer reports together with "[500] " / "[250] " / "[100] " prefixes, become one
row each. `compare_outputs` is the submission validator's check: numpy's assert_allclose
rule (|a - b| <= atol + rtol * |b|, NaN equal to NaN) with a per-array report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from nlb_ndt.atomic import write_text_atomic
from nlb_ndt.datasets import parse_group
from nlb_ndt.scoring.evalai_file import (
    SubmissionError,
    check_submission,
    check_target,
    group_shapes,
    read_h5,
    trial_counts,
)

#: Metric columns in EvalAI's leaderboard order.
METRICS = ("co-bps", "vel R2", "tp corr", "psth R2", "fp-bps")
_SCALING_PREFIX = {"[500]": "mc_maze_large", "[250]": "mc_maze_medium",
                   "[100]": "mc_maze_small"}


def _as_dict(source, what: str, groups: list[str] | None = None) -> dict:
    if isinstance(source, (str, Path)):
        return read_h5(source, what=what, groups=groups)
    return dict(source)


def flatten_results(results: list[dict]) -> list[dict]:
    """nlb_tools' [{"<group>_split": {metric: value}}, ...] -> one row per dataset group."""
    rows: dict[str, dict] = {}
    for entry in results:
        for split, metrics in entry.items():
            if split.startswith("mc_maze_scaling"):
                suffix = "_20" if split == "mc_maze_scaling_20_split" else ""
                for name, value in metrics.items():
                    prefix, metric = name.split(" ", 1)
                    group = _SCALING_PREFIX[prefix] + suffix
                    rows.setdefault(group, {"group": group})[metric] = float(value)
            else:
                group = split[: -len("_split")]
                row = rows.setdefault(group, {"group": group})
                row.update({k: float(v) for k, v in metrics.items()})
    out = []
    for group, row in rows.items():
        dataset, bin_ms = parse_group(group)
        out.append({"group": group, "dataset": dataset, "bin_ms": bin_ms,
                    **{m: row[m] for m in METRICS if m in row}})
    return out


def score_submission(target, submission, *, groups: Iterable[str] | None = None
                     ) -> list[dict]:
    """Score a submission against ground truth with nlb_tools' `evaluate`.

    Args:
        target: path (str or Path) of a target h5 (`make_eval_target_tensors` layout, e.g.
            the val target or `eval_data_test.h5`) or the same as a dict.
        submission: path or dict {group: six arrays}.
        groups: groups to score; default every group of the submission.

    Returns:
        One row per group (see module docstring), in the scorer's order.

    Raises:
        SubmissionError: a group or array is missing or malformed in either input, or a
            submission array's shape does not match the target's trials / neurons.
    """
    from nlb_tools.evaluation import evaluate  # sklearn and pandas; only when scoring

    sub_where = str(submission) if isinstance(submission, (str, Path)) else "submission"
    tgt_where = str(target) if isinstance(target, (str, Path)) else "target"
    groups = None if groups is None else list(groups)
    sub = _as_dict(submission, "submission", groups)
    groups = list(sub) if groups is None else groups
    tgt = _as_dict(target, "target", groups)  # only the groups scored (the public file is large)
    if not groups:
        raise SubmissionError(f"{sub_where}: the submission has no groups to score")
    check_target(tgt, groups, where=tgt_where)
    expected = {}
    for group in groups:
        dataset, bin_ms = parse_group(group)
        expected[group] = group_shapes(dataset, bin_ms=bin_ms, **trial_counts(tgt[group]))
    check_submission(sub, expected, where=sub_where)
    # evaluate() takes str paths or dicts (not pathlib) and skips groups it cannot match;
    # passing only the checked groups as dicts makes every skip impossible.
    # One BLAS thread: the scorer's many small ridge fits run 4-8x slower on more.
    with threadpool_limits(limits=1):
        results = evaluate({g: tgt[g] for g in groups}, {g: sub[g] for g in groups})
    return flatten_results(results)


def format_scores(rows: list[dict]) -> str:
    """A fixed-width table in the leaderboard's columns (behaviour: vel R2 or tp corr)."""
    header = ("dataset", "bin", "co-bps", "vel R2/tp corr", "psth R2", "fp-bps")
    lines = [header]
    for row in rows:
        behaviour = row.get("vel R2", row.get("tp corr"))
        cells = [row["dataset"], f"{row['bin_ms']} ms"]
        for value in (row.get("co-bps"), behaviour, row.get("psth R2"), row.get("fp-bps")):
            cells.append("-" if value is None or math.isnan(value) else f"{value:.4f}")
        lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def save_scores(path: str | Path, payload: Mapping) -> Path:
    """Write a scores JSON (NaN written as null)."""
    def clean(obj):
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, Mapping):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.floating, np.integer)):
            return clean(obj.item())
        return obj

    return write_text_atomic(path, json.dumps(clean(payload), indent=2) + "\n")


@dataclass(frozen=True)
class ArrayDiff:
    """How one array of `actual` differs from the same array of `desired`.

    Attributes:
        name: "group/key".
        shape: the desired array's shape (None if it is missing).
        max_abs: largest |actual - desired| (NaN if not comparable).
        max_rel: largest |actual - desired| / |desired| (inf where desired is 0).
        n_bad: elements outside atol + rtol * |desired|.
        ok: the array matches.
        note: why it could not be compared (missing, shape), else "".
    """

    name: str
    shape: tuple | None
    max_abs: float
    max_rel: float
    n_bad: int
    ok: bool
    note: str = ""


def _flat(data: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _diff_one(name: str, a: np.ndarray, b: np.ndarray, rtol: float, atol: float,
              chunk: int = 128) -> ArrayDiff:
    a, b = np.atleast_1d(np.asarray(a)), np.atleast_1d(np.asarray(b))
    if a.shape != b.shape:
        return ArrayDiff(name, b.shape, math.nan, math.nan, -1, False,
                         f"shape {a.shape} vs {b.shape}")
    max_abs = max_rel = 0.0
    n_bad = 0
    # Chunks along the first axis keep the float64 temporaries small (mc_maze's train
    # rates are 2295 x 140 x 137).
    for start in range(0, a.shape[0], chunk):
        x = a[start:start + chunk].astype(np.float64)
        y = b[start:start + chunk].astype(np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        diff = np.where(both_nan, 0.0, np.abs(x - y))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(y))
        rel = np.where(np.isnan(rel), np.inf, rel)
        n_bad += int(np.count_nonzero(diff > atol + rtol * np.abs(np.nan_to_num(y))))
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float(rel.max()))
    return ArrayDiff(name, b.shape, max_abs, max_rel, n_bad, n_bad == 0)


def compare_outputs(actual: Mapping, desired: Mapping, rtol: float = 1e-5,
                    atol: float = 0.0) -> list[ArrayDiff]:
    """Compare every array of `desired` with the same array of `actual`.

    Both are dicts of arrays, possibly nested ({group: {key: array}}); arrays are named
    "group/key". An array present on one side only is a mismatch.
    """
    a, b = _flat(actual), _flat(desired)
    diffs = []
    for name in list(b) + [n for n in a if n not in b]:
        if name not in a or name not in b:
            side = "actual (recomputed)" if name not in a else "desired (file)"
            shape = np.shape(b[name]) if name in b else None
            diffs.append(ArrayDiff(name, shape, math.nan, math.nan, -1, False,
                                   f"missing from {side}"))
            continue
        diffs.append(_diff_one(name, a[name], b[name], rtol, atol))
    return diffs


def format_comparison(diffs: list[ArrayDiff], rtol: float = 1e-5) -> str:
    """One line per array: status, name, shape, largest absolute and relative difference."""
    lines = []
    for d in diffs:
        status = "ok  " if d.ok else "FAIL"
        detail = d.note or (f"max |diff| {d.max_abs:.3g}, max rel {d.max_rel:.3g}, "
                            f"{d.n_bad} elements beyond rtol {rtol:g}")
        shape = "x".join(map(str, d.shape)) if d.shape else "-"
        lines.append(f"{status} {d.name} ({shape}): {detail}")
    return "\n".join(lines)
