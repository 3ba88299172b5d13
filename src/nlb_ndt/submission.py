"""The EvalAI submission file: build, check, write and read it.

Layout (nlb_facts.md §6): one group per dataset and bin size (`mc_maze`, `mc_maze_20`),
each holding six float32 arrays of rates in spikes per bin, shaped (trials, bins, neurons):

    train_rates_heldin   (n_train, T_obs, N_in)     train_rates_heldout  (n_train, T_obs, N_out)
    eval_rates_heldin    (n_eval,  T_obs, N_in)     eval_rates_heldout   (n_eval,  T_obs, N_out)
    eval_rates_heldin_forward (n_eval, T_fwd, N_in) eval_rates_heldout_forward (n_eval, T_fwd, N_out)

Val phase: train = the train split, eval = the val split. Test phase: train = train+val,
eval = test. The three MC_Maze scaling datasets must share one file (the scorer reports them
together). Files are written with nlb_tools' `save_to_h5` (float32, gzip) to a temporary
name and then renamed, so a half-written file never carries the final name.

Every file read here is checked first; a problem is reported as one line that names the
file, the array and what is wrong (`SubmissionError`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from .atomic import atomic_write, write_text_atomic
from .datasets import (SCALING_DATASETS, SUPPORTED_BIN_MS, SYNTHETIC_MARKER, check_phase,
                       get_spec)

log = logging.getLogger(__name__)

#: The six arrays of a submission group, in nlb_tools' order.
RATE_KEYS = (
    "train_rates_heldin",
    "train_rates_heldout",
    "eval_rates_heldin",
    "eval_rates_heldout",
    "eval_rates_heldin_forward",
    "eval_rates_heldout_forward",
)

#: Arrays of a target (ground-truth) group that nlb_tools' `evaluate` always reads.
TARGET_KEYS = ("eval_spikes_heldout", "train_behavior", "eval_behavior")

Shape = tuple  # (trials | None, bins, neurons); None matches any trial count


class SubmissionError(ValueError):
    """A submission or target file (or dict) that cannot be scored; one line."""


def parse_group(group: str) -> tuple[str, int]:
    """("mc_maze_20") -> ("mc_maze", 20); ("mc_maze") -> ("mc_maze", 5)."""
    for bin_ms in SUPPORTED_BIN_MS:
        if bin_ms != 5 and group.endswith(f"_{bin_ms}"):
            return get_spec(group[: -len(f"_{bin_ms}")]).name, bin_ms
    return get_spec(group).name, 5


def group_shapes(dataset: str, *, bin_ms: int = 5, n_train: int | None = None,
                 n_eval: int | None = None, n_heldin: int | None = None,
                 n_heldout: int | None = None) -> dict[str, Shape]:
    """Expected shape of each of the six arrays of `dataset` at `bin_ms`.

    Bins come from the dataset table. Neuron counts default to the table; trial counts
    default to "any", because they should come from the data actually used (the table's
    DMFC trial counts are stale and synthetic data has its own): pass them from the
    tensors or the target (`trial_counts`).
    """
    spec = get_spec(dataset)
    t_obs, t_fwd = spec.bins(bin_ms)
    n_in = spec.n_heldin if n_heldin is None else int(n_heldin)
    n_out = spec.n_heldout if n_heldout is None else int(n_heldout)
    return {
        "train_rates_heldin": (n_train, t_obs, n_in),
        "train_rates_heldout": (n_train, t_obs, n_out),
        "eval_rates_heldin": (n_eval, t_obs, n_in),
        "eval_rates_heldout": (n_eval, t_obs, n_out),
        "eval_rates_heldin_forward": (n_eval, t_fwd, n_in),
        "eval_rates_heldout_forward": (n_eval, t_fwd, n_out),
    }


def trial_counts(source: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Trial and neuron counts of a tensor dict (train_spikes_heldin, ...) or target group.

    Returns the keyword arguments of `group_shapes` that the source determines.
    """
    counts: dict[str, int] = {}
    if "train_spikes_heldin" in source:  # NDT tensors (val or test phase)
        counts["n_train"] = int(np.shape(source["train_spikes_heldin"])[0])
        counts["n_heldin"] = int(np.shape(source["train_spikes_heldin"])[2])
        if "train_spikes_heldout" in source:
            counts["n_heldout"] = int(np.shape(source["train_spikes_heldout"])[2])
        if "eval_spikes_heldin" in source:
            counts["n_eval"] = int(np.shape(source["eval_spikes_heldin"])[0])
        return counts
    if "train_behavior" in source:  # a target group: behaviour is per train trial
        counts["n_train"] = int(np.shape(source["train_behavior"])[0])
    if "eval_spikes_heldout" in source:
        counts["n_eval"] = int(np.shape(source["eval_spikes_heldout"])[0])
        counts["n_heldout"] = int(np.shape(source["eval_spikes_heldout"])[2])
    if "eval_spikes_heldin_forward" in source:
        counts["n_heldin"] = int(np.shape(source["eval_spikes_heldin_forward"])[2])
    return counts


def _fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


def check_array(value, *, name: str, shape: Shape | None = None, where: str = "submission",
                allow_nan: bool = False, what: str = "rates") -> None:
    """Raise SubmissionError (one line) unless `value` is a finite, non-negative float array.

    Args:
        value: the array (numpy or h5py dataset; a group is an error).
        name: "group/key", used in the message.
        shape: expected shape; None entries match anything.
        where: the file (or "submission") the array came from.
        allow_nan: NaN is allowed (targets: NaN marks unscored bins).
        what: "rates" or "spikes", for the messages.
    """
    if isinstance(value, (h5py.Group, Mapping)):
        raise SubmissionError(f"{where}: {name} is a group; expected an array of {what}")
    arr = np.asarray(value[()] if isinstance(value, h5py.Dataset) else value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise SubmissionError(f"{where}: {name} has dtype {arr.dtype}; {what} must be "
                              f"floating point (float32)")
    if shape is not None:
        ok = arr.ndim == len(shape) and all(
            want is None or got == want for got, want in zip(arr.shape, shape))
        if not ok:
            raise SubmissionError(
                f"{where}: {name} has shape {arr.shape}; expected {_fmt_shape(shape)} "
                f"(trials, bins, neurons)")
    nan = np.isnan(arr)
    if not allow_nan and nan.any():
        first = tuple(int(i) for i in np.argwhere(nan)[0])
        raise SubmissionError(f"{where}: {name} contains {int(nan.sum())} NaN values "
                              f"(first at index {first})")
    inf = np.isinf(arr)
    if inf.any():
        first = tuple(int(i) for i in np.argwhere(inf)[0])
        raise SubmissionError(f"{where}: {name} contains {int(inf.sum())} infinite values "
                              f"(first at index {first})")
    negative = arr < 0  # NaN compares False, so allowed NaNs never count here
    if negative.any():
        raise SubmissionError(f"{where}: {name} contains {int(negative.sum())} negative "
                              f"{what} (min {float(arr[negative].min()):.4g})")


def check_submission(data: Mapping, expected: Mapping[str, Mapping[str, Shape]], *,
                     where: str = "submission") -> None:
    """Check that `data` has each expected group with its six valid arrays.

    Args:
        data: {group: {key: array}} (a dict or an open h5py.File).
        expected: {group: group_shapes(...)}.
        where: the file name, for messages.
    """
    for group, shapes in expected.items():
        if group not in data:
            present = ", ".join(sorted(data.keys())) or "none"
            raise SubmissionError(f"{where}: group {group!r} is missing "
                                  f"(groups present: {present})")
        node = data[group]
        if not isinstance(node, (Mapping, h5py.Group)):
            raise SubmissionError(f"{where}: {group} is an array; expected a group of "
                                  f"the six rate arrays")
        for key, shape in shapes.items():
            if key not in node:
                raise SubmissionError(f"{where}: {group}/{key} is missing")
            check_array(node[key], name=f"{group}/{key}", shape=shape, where=where)


def check_target(data: Mapping, groups: Iterable[str], *, where: str = "target") -> None:
    """Check a ground-truth dict / file for the arrays `evaluate` reads, per group.

    Spikes may hold NaN (unscored bins, as in DMFC) but no inf and no negative counts.
    """
    for group in groups:
        if group not in data:
            present = ", ".join(sorted(data.keys())) or "none"
            raise SubmissionError(f"{where}: group {group!r} is missing "
                                  f"(groups present: {present})")
        node = data[group]
        for key in TARGET_KEYS:
            if key not in node:
                raise SubmissionError(f"{where}: {group}/{key} is missing")
        dataset, bin_ms = parse_group(group)
        t_obs, t_fwd = get_spec(dataset).bins(bin_ms)
        shapes = {"eval_spikes_heldout": (None, t_obs, None),
                  "eval_spikes_heldin_forward": (None, t_fwd, None),
                  "eval_spikes_heldout_forward": (None, t_fwd, None)}
        for key, shape in shapes.items():
            if key in node:
                check_array(node[key], name=f"{group}/{key}", shape=shape, where=where,
                            allow_nan=True, what="spikes")


def build_submission(rates: Mapping[str, Mapping[str, np.ndarray]], *,
                     expected: Mapping[str, Mapping[str, Shape]] | None = None,
                     ) -> dict[str, dict[str, np.ndarray]]:
    """{group: six arrays} as float32, checked; other keys are dropped.

    Args:
        rates: {group: {key: rates}} with at least the six RATE_KEYS per group.
        expected: {group: group_shapes(...)}; default: shapes from the dataset table
            (neurons and bins checked, trial counts not).
    """
    if expected is None:
        expected = {}
        for group in rates:
            dataset, bin_ms = parse_group(group)
            expected[group] = group_shapes(dataset, bin_ms=bin_ms)
    out = {group: {key: np.asarray(rates[group][key], dtype=np.float32) for key in RATE_KEYS
                   if key in rates[group]}
           for group in rates}
    check_submission(out, expected)
    return out


def warn_scaling(groups: Iterable[str]) -> None:
    """Log a warning when a file holds some but not all of the three scaling datasets."""
    for suffix in ("", "_20"):
        present = [d for d in SCALING_DATASETS if f"{d}{suffix}" in groups]
        if present and len(present) < len(SCALING_DATASETS):
            missing = [d for d in SCALING_DATASETS if d not in present]
            log.warning("the file holds %s but not %s; EvalAI scored the three scaling "
                        "datasets only when they were in one file", ", ".join(present),
                        ", ".join(missing))


def write_submission(data: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, *,
                     overwrite: bool = False) -> Path:
    """Write {group: arrays} with nlb_tools' `save_to_h5` (float32, gzip), atomically.

    Raises FileExistsError if `path` exists and `overwrite` is False.
    """
    from nlb_tools.make_tensors import save_to_h5

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    log.info("writing %s (groups: %s)", path, ", ".join(data))
    with atomic_write(path) as tmp:
        save_to_h5({g: {k: np.asarray(v) for k, v in arrays.items()}
                    for g, arrays in data.items()}, str(tmp), overwrite=True)
    return path


def read_h5(path: str | Path, *, what: str = "submission",
            groups: Iterable[str] | None = None) -> dict:
    """An h5 file as a nested dict of arrays; one-line errors for a missing or non-HDF5 file.

    Args:
        path: the file.
        what: "submission" or "target", for the messages.
        groups: read only these top-level entries (those present); default all.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{what} file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys()) if groups is None else [g for g in groups if g in f]
            return {key: _to_dict(f[key]) if isinstance(f[key], h5py.Group) else f[key][()]
                    for key in keys}
    except OSError as exc:
        raise SubmissionError(f"{path}: not a readable HDF5 file ({exc})") from None


def _to_dict(node: h5py.Group) -> dict:
    return {key: _to_dict(item) if isinstance(item, h5py.Group) else item[()]
            for key, item in node.items()}


def read_submission(path: str | Path, *, expected: Mapping[str, Mapping[str, Shape]] | None
                    = None) -> dict[str, dict[str, np.ndarray]]:
    """Read and check a submission file.

    Args:
        path: the h5 file.
        expected: {group: group_shapes(...)} to require; default: every group found
            (datasets from their names, shapes from the table, trial counts unchecked).
    """
    data = read_h5(path)
    if expected is None:
        expected = {}
        for group in data:
            try:
                dataset, bin_ms = parse_group(group)
            except ValueError:
                raise SubmissionError(f"{path}: group {group!r} is not an NLB dataset "
                                      f"(mc_maze, mc_maze_20, ...)") from None
            expected[group] = group_shapes(dataset, bin_ms=bin_ms)
        if not expected:
            raise SubmissionError(f"{path}: the file has no groups")
    check_submission(data, expected, where=str(path))
    return data


# --------------------------------------------------------------------------- the stage
# rank -> choose N -> top-N mean for the phase -> h5 -> local scores. Checkpoints are
# handled by nlb_ndt.ranking; this part only orchestrates and writes.

@dataclass
class SubmissionResult:
    """What `make_submission` wrote and scored.

    Attributes:
        path: the submission h5.
        phase: "val" or "test".
        scores: one row per group (evaluation.score_submission), or None when unscored.
        reason: why the file is unscored ("" when scored).
        target: the ground truth scored against (None when unscored).
        scores_path: the JSON written beside the h5.
        ensembles: per run name, the ensemble choice (chosen_n, argmax_n, members, ...).
        figures: every PNG written.
    """

    path: Path
    phase: str
    scores: list[dict] | None
    reason: str
    target: str | None
    scores_path: Path
    ensembles: dict[str, dict] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def default_output(names: Sequence[str], phase: str, *, paths=None) -> Path:
    """`<submissions_dir>/<NAME>/submission-<phase>.h5`; several names share one folder
    (`mc_maze_scaling` for the three scaling datasets, else the names joined by '+')."""
    from .paths import get_paths

    paths = paths or get_paths()
    if len(names) == 1:
        folder = names[0]
    elif sorted(names) == sorted(SCALING_DATASETS):
        folder = "mc_maze_scaling"
    else:
        folder = "+".join(names)
    return paths.submissions_dir / folder / f"submission-{phase}.h5"


def scores_path_for(path: str | Path) -> Path:
    """The scores JSON beside a submission: submission-val.h5 -> submission-val.scores.json."""
    path = Path(path)
    return path.with_name(f"{path.stem}.scores.json")


def choose_ensemble(name: str, ranking, *, spikes_heldout: np.ndarray, out_dir: Path,
                    max_ensemble: int = 50, ensemble_size: int | str = "auto") -> dict:
    """Sweep N = 1..M on val, pick the argmax (or the override), write the curve.

    Writes `ensemble.csv` (n, co-bps, the n-th member), `ensemble.json` (the choice and
    its members) and `ensemble.png` into `out_dir`.

    Returns:
        the ensemble.json content.
    """
    from . import plots
    from .ensemble import choose_size, ensemble_curve
    from .ranking import cached_heldout

    if max_ensemble < 1:
        raise ValueError(f"--max-ensemble must be >= 1, not {max_ensemble}")
    override = ensemble_size not in (None, "auto")
    if override and not 1 <= int(ensemble_size) <= len(ranking):
        raise ValueError(f"--ensemble-size {ensemble_size}: {name} has {len(ranking)} "
                         f"snapshots")
    # The sweep always covers an overriding N, so its val co-bps is on the curve too.
    m = min(max(max_ensemble, int(ensemble_size) if override else 1), len(ranking))
    curve = ensemble_curve(cached_heldout(ranking.head(m), out_dir), spikes_heldout)
    best = choose_size(curve)
    chosen, how = ((int(ensemble_size), "--ensemble-size") if override
                   else (best, "argmax of val co-bps"))
    members = ranking.head(chosen)
    top = ranking.head(m)
    import pandas as pd

    table = pd.DataFrame({"n": np.arange(1, m + 1), "co-bps": curve,
                          "member_trial_id": top["trial_id"].to_numpy(),
                          "member_val_ckpt": top["val_ckpt"].to_numpy(),
                          "member_co-bps": top["co-bps"].to_numpy()})
    with atomic_write(out_dir / "ensemble.csv") as tmp:
        table.to_csv(tmp, index=False)
    choice = {
        "name": name, "max_ensemble": m, "argmax_n": best,
        "argmax_co-bps": float(curve[best - 1]), "chosen_n": chosen, "chosen_by": how,
        "chosen_co-bps": float(curve[chosen - 1]),
        "best_single_co-bps": float(curve[0]),
        "members": [{"trial_id": r["trial_id"], "val_ckpt": r["val_ckpt"],
                     "co-bps": float(r["co-bps"]), "path": r["path"]}
                    for r in members.to_dict("records")],
    }
    write_text_atomic(out_dir / "ensemble.json", json.dumps(choice, indent=2) + "\n")
    plots.plot_ensemble_curve(curve, out_dir / "ensemble.png", chosen=chosen, argmax=best,
                              title=f"{name}: ensemble size sweep (val)")
    log.info("%s: best single val co-bps %.4f; top-%d mean %.4f (argmax N=%d); using N=%d",
             name, curve[0], best, curve[best - 1], best, chosen)
    return choice


def _search_objective(name: str, paths) -> str:
    """The objective recorded by run_hyperopt (experiment_info.json), else the original's."""
    for info in sorted((paths.ray_tune_home / name).glob("*/experiment_info.json")):
        try:
            return str(json.loads(info.read_text()).get("objective") or "best_masked_loss")
        except (OSError, ValueError):
            continue
    return "best_masked_loss"


def _synthetic(dataset: str, paths) -> bool:
    return (paths.data_raw / get_spec(dataset).dandiset_id / SYNTHETIC_MARKER).is_file()


def make_submission(names: Sequence[str], *, phase: str = "val",
                    ensemble_size: int | str = "auto", max_ensemble: int = 50,
                    out: str | Path | None = None, overwrite: bool = False,
                    device: str | None = "auto", ground_truth: str | Path | None = None,
                    paths=None) -> SubmissionResult:
    """Rank, choose N, average the top N for `phase`, write the h5, score it, plot.

    Args:
        names: run names (datasets or "synthetic"); all go into one file (so the three
            scaling datasets, named together, share a file as the scorer requires).
        phase: "val" (rates on the val trials, scored against the val target) or "test"
            (rates on the test trials, scored against `paths.eval_data_test` when present).
        ensemble_size: "auto" (argmax of the val curve) or N.
        max_ensemble: M, the largest N swept.
        out: the h5 to write (default `default_output`).
        overwrite: replace an existing h5 and its scores JSON.
        device: where models run.
        ground_truth: the test-split ground truth (default `paths.eval_data_test`).
        paths: resolved paths (default: from the environment).

    Returns:
        A SubmissionResult (the scores are also written to `scores_path_for(out)`).
    """
    from . import plots, preprocess
    from .evaluation import save_scores, score_submission
    from .paths import get_paths
    from .ranking import ensemble_rates, rank_snapshots, run_settings, trial_dirs, work_dir
    from .train import resolve_device

    paths = paths or get_paths()
    check_phase(phase)
    names = list(dict.fromkeys(names))
    settings = {name: run_settings(name, paths=paths) for name in names}
    groups = [s.group for s in settings.values()]
    if len(set(groups)) < len(groups):
        raise ValueError(f"runs {', '.join(names)} would write the same group twice "
                         f"({', '.join(groups)}); name each dataset once")
    out = Path(out) if out is not None else default_output(names, phase, paths=paths)
    scores_path = scores_path_for(out)
    for existing in (out, scores_path):
        if existing.exists() and not overwrite:
            raise FileExistsError(f"{existing} exists; pass --overwrite to replace it")
    device = resolve_device(device)

    rates, expected, ensembles, figures, val_targets = {}, {}, {}, [], {}
    for name, s in settings.items():
        wdir = work_dir(name, paths=paths)
        ranking = rank_snapshots(name, paths=paths, out_dir=wdir, device=device)
        val_targets[s.group] = preprocess.load_val_target(
            s.dataset, bin_ms=s.bin_ms, paths=paths)[s.group]
        ensembles[name] = choose_ensemble(
            name, ranking, spikes_heldout=np.asarray(val_targets[s.group]["eval_spikes_heldout"]),
            out_dir=wdir, max_ensemble=max_ensemble, ensemble_size=ensemble_size)
        figures.append(wdir / "ensemble.png")
        trials = plots.read_trial_histories(trial_dirs(name, paths=paths))
        if trials:
            figures.append(plots.plot_search(trials, wdir / "search.png",
                                             title=f"{name}: {len(trials)} trials",
                                             objective=_search_objective(name, paths)))
        tensors = preprocess.load_tensors(s.dataset, phase=phase, bin_ms=s.bin_ms,
                                          paths=paths)
        expected[s.group] = group_shapes(s.dataset, bin_ms=s.bin_ms, **trial_counts(tensors))
        members = [m["path"] for m in ensembles[name]["members"]]
        log.info("%s: averaging %d snapshots on the %s-phase trials", name, len(members), phase)
        rates[s.group] = ensemble_rates(members, train_heldin=tensors["train_spikes_heldin"],
                                        eval_heldin=tensors["eval_spikes_heldin"],
                                        device=device)
        del tensors
    data = build_submission(rates, expected=expected)
    warn_scaling([s.group for s in settings.values() if not _synthetic(s.dataset, paths)])
    write_submission(data, out, overwrite=overwrite)

    # Score the file as written (read back from disk), not the arrays in memory.
    scores, reason, target = None, "", None
    truth = Path(ground_truth) if ground_truth is not None else paths.eval_data_test
    if phase == "val":
        target = "val split (make_eval_target_tensors, train='train', eval='val')"
        scores = score_submission(val_targets, str(out), groups=groups)
    elif truth.is_file():
        try:
            scores = score_submission(str(truth), str(out), groups=groups)
            target = str(truth)
        except SubmissionError as exc:  # e.g. ground truth without this dataset's group
            reason = f"the ground truth cannot score this file: {exc}"
            log.warning("UNSCORED: %s", reason)
    else:
        reason = (f"no test-split ground truth at {truth}; fetch it with "
                  f"`python download_data.py --eval-data` and re-run with --overwrite")
        log.warning("UNSCORED: %s", reason)

    for name, s in settings.items():
        if _synthetic(s.dataset, paths):
            from .synthetic import true_rates

            true = true_rates(paths.data_raw, s.dataset, phase=phase, bin_ms=s.bin_ms)
            figures.append(plots.plot_rates_vs_truth(
                data[s.group], true, out.with_name(f"{out.stem}.rates.{s.group}.png"),
                bin_ms=s.bin_ms, title=f"{name} ({phase}): ensemble of "
                f"{ensembles[name]['chosen_n']} vs true rates, eval trial 0"))

    save_scores(scores_path, {
        "file": str(out), "phase": phase, "scored": scores is not None,
        "reason": reason or None, "target": target, "scores": scores or [],
        "ensembles": ensembles, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return SubmissionResult(path=out, phase=phase, scores=scores, reason=reason,
                            target=target, scores_path=scores_path, ensembles=ensembles,
                            figures=figures)
