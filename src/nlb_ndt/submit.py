"""The make-submission stage: rank, choose the ensemble, write the h5, score it, plot.

    rank_snapshots -> choose_ensemble (the size sweep on val) -> the members' mean rates
    on the phase's trials -> submission h5 (EvalAI layout) -> local scores (JSON + table)

Checkpoint files are read by nlb_ndt.ranking and nlb_ndt.inference, the file format is
nlb_ndt.submission and the scorer nlb_ndt.evaluation; this module only composes them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import plots, preprocess
from .atomic import atomic_write, write_text_atomic
from .datasets import SCALING_DATASETS, SYNTHETIC_MARKER, check_phase, get_spec
from .ensemble import ENSEMBLE_METHODS, choose_size, ensemble_curve, greedy_selection
from .evaluation import save_scores, score_submission
from .inference import ensemble_rates
from .paths import get_paths
from .ranking import cached_heldout, rank_snapshots, work_dir
from .refit import refit_members
from .runs import (
    SNAPSHOT_KINDS,
    experiment_records,
    read_trial_histories,
    run_settings,
    search_objective,
    trial_dirs,
)
from .runtime import resolve_device
from .submission import (
    SubmissionError,
    build_submission,
    group_shapes,
    trial_counts,
    warn_scaling,
    write_submission,
)

log = logging.getLogger(__name__)


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
        refit: whether the models were refitted on train+val (test phase only).
    """

    path: Path
    phase: str
    scores: list[dict] | None
    reason: str
    target: str | None
    scores_path: Path
    ensembles: dict[str, dict] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    refit: bool = False  # the test-phase models were retrained on train+val


def default_output(names: Sequence[str], phase: str, *, paths=None) -> Path:
    """`<submissions_dir>/<NAME>/submission-<phase>.h5`; several names share one folder
    (`mc_maze_scaling` for the three scaling datasets, else the names joined by '+')."""
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


def _member(row: dict, count: int = 1) -> dict:
    return {"trial_id": row["trial_id"], "val_ckpt": row["val_ckpt"],
            "co-bps": float(row["co-bps"]), "path": row["path"],
            "epoch": None if pd.isna(row.get("epoch")) else int(row["epoch"]), "count": count}


def choose_ensemble(name: str, ranking, *, spikes_heldout: np.ndarray, out_dir: Path,
                    max_ensemble: int = 50, ensemble_size: int | str = "auto",
                    method: str = "topn") -> dict:
    """Sweep the ensemble size on val, pick the members, write the curve(s).

    topn (AESMTE3): the mean of the top N snapshots for N = 1..M, N the argmax (or the
    override). greedy: forward selection with replacement over every ranked snapshot for
    M steps (ensemble.greedy_selection), keeping its best prefix; the top-N curve is
    computed too, so the plot and ensemble.csv show both. Snapshots' val rates come from
    the ranking's cache (memory-mapped): no model runs here.

    Writes `ensemble.csv` (per size: the top-N co-bps and member, the greedy co-bps and
    the snapshot it added), `ensemble.json` (the choice, its members with multiplicities)
    and `ensemble.png` into `out_dir`.

    Returns:
        the ensemble.json content.
    """
    if max_ensemble < 1:
        raise ValueError(f"--max-ensemble must be >= 1, not {max_ensemble}")
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; choose from "
                         f"{', '.join(ENSEMBLE_METHODS)}")
    override = ensemble_size not in (None, "auto")
    limit = len(ranking) if method == "topn" else max_ensemble
    if override and not 1 <= int(ensemble_size) <= limit:
        raise ValueError(f"--ensemble-size {ensemble_size}: {name} has {len(ranking)} "
                         f"snapshots" + ("" if method == "topn" else
                                         f" and greedy takes {max_ensemble} steps"))
    # The sweep always covers an overriding N, so its val co-bps is on the curve too.
    m = min(max(max_ensemble, int(ensemble_size) if override else 1), len(ranking))
    curve = ensemble_curve(cached_heldout(ranking.head(m), out_dir), spikes_heldout)
    best = choose_size(curve)
    rows = ranking.to_dict("records")
    table = {"n": np.arange(1, m + 1), "co-bps": curve,
             "member_trial_id": [r["trial_id"] for r in rows[:m]],
             "member_val_ckpt": [r["val_ckpt"] for r in rows[:m]],
             "member_co-bps": [float(r["co-bps"]) for r in rows[:m]]}
    greedy_curve = None
    if method == "greedy":
        steps = max(max_ensemble, int(ensemble_size) if override else 1)
        candidates = [np.load(Path(out_dir) / r["rates_file"], mmap_mode="r") for r in rows]
        greedy = greedy_selection(candidates, np.asarray(spikes_heldout), max_steps=steps)
        greedy_curve = greedy.curve
        chosen = int(ensemble_size) if override else greedy.best_n
        counts: dict[int, int] = {}
        for index in greedy.steps[:chosen]:
            counts[index] = counts.get(index, 0) + 1
        members = [_member(rows[i], c) for i, c in counts.items()]
        chosen_cobps = float(greedy.curve[chosen - 1])
        how = "--ensemble-size" if override else "argmax of greedy val co-bps"
        n = max(m, len(greedy.steps))
        table = {k: list(v) + [None] * (n - m) for k, v in table.items()}
        table["n"] = np.arange(1, n + 1)
        table["greedy_co-bps"] = list(greedy.curve) + [None] * (n - len(greedy.steps))
        table["greedy_trial_id"] = [rows[i]["trial_id"] for i in greedy.steps]
        table["greedy_val_ckpt"] = [rows[i]["val_ckpt"] for i in greedy.steps]
    else:
        chosen, how = ((int(ensemble_size), "--ensemble-size") if override
                       else (best, "argmax of val co-bps"))
        members = [_member(r) for r in rows[:chosen]]
        chosen_cobps = float(curve[chosen - 1])
    with atomic_write(out_dir / "ensemble.csv") as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    choice = {
        "name": name, "method": method, "max_ensemble": m, "argmax_n": best,
        "argmax_co-bps": float(curve[best - 1]), "chosen_n": chosen, "chosen_by": how,
        "chosen_co-bps": chosen_cobps, "best_single_co-bps": float(curve[0]),
        "distinct_members": len(members), "members": members,
        "topn_curve": [float(v) for v in curve],
        "greedy_curve": None if greedy_curve is None else [float(v) for v in greedy_curve],
    }
    write_text_atomic(out_dir / "ensemble.json", json.dumps(choice, indent=2) + "\n")
    plots.plot_ensemble_curve(curve, out_dir / "ensemble.png", chosen=chosen, argmax=best,
                              greedy=greedy_curve, method=method,
                              title=f"{name}: ensemble size sweep (val)")
    log.info("%s: best single val co-bps %.4f; top-%d mean %.4f (argmax N=%d); %s ensemble "
             "of %d (%d distinct): %.4f", name, curve[0], best, curve[best - 1], best,
             method, chosen, len(members), chosen_cobps)
    return choice


def default_snapshot_kinds(name: str, *, paths=None) -> tuple[str, ...]:
    """The candidates a run's search recorded (its profile's; aesmte3: lve, lfve), else all."""
    for record in experiment_records(name, paths=paths):
        kinds = record.get("snapshots")
        if kinds:
            return tuple(kinds)
    return SNAPSHOT_KINDS


def _synthetic(dataset: str, paths) -> bool:
    return (paths.data_raw / get_spec(dataset).dandiset_id / SYNTHETIC_MARKER).is_file()


def make_submission(names: Sequence[str], *, phase: str = "val",
                    ensemble_size: int | str = "auto", max_ensemble: int = 50,
                    out: str | Path | None = None, overwrite: bool = False,
                    device: str | None = "auto", ground_truth: str | Path | None = None,
                    snapshots: Sequence[str] | None = None, ensemble_method: str = "topn",
                    refit: bool = False, experiments: Sequence[str] | None = None,
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
        snapshots: the snapshot kinds that are candidates (default: what the run's
            search recorded, from its profile; else all three).
        ensemble_method: "topn" (AESMTE3) or "greedy" (forward selection with
            replacement on val co-bps).
        refit: test phase only: average models retrained on train+val (nlb_ndt.refit)
            instead of the snapshots themselves; the scores are labelled as such.
        experiments: only these experiments' snapshots are candidates (default: all of
            the run's).
        paths: resolved paths (default: from the environment).

    Returns:
        A SubmissionResult (the scores are also written to `scores_path_for(out)`).
    """
    paths = paths or get_paths()
    check_phase(phase)
    if refit and phase != "test":
        raise ValueError("--refit applies to --phase test only: a refit trains on the val "
                         "trials, which chose the ensemble and score the val phase")
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
        kinds = tuple(snapshots) if snapshots else default_snapshot_kinds(name, paths=paths)
        ranking = rank_snapshots(name, paths=paths, out_dir=wdir, device=device, kinds=kinds,
                                 experiments=experiments)
        val_targets[s.group] = preprocess.load_val_target(
            s.dataset, bin_ms=s.bin_ms, paths=paths)[s.group]
        ensembles[name] = choose_ensemble(
            name, ranking, spikes_heldout=np.asarray(val_targets[s.group]["eval_spikes_heldout"]),
            out_dir=wdir, max_ensemble=max_ensemble, ensemble_size=ensemble_size,
            method=ensemble_method)
        figures.append(wdir / "ensemble.png")
        trials = read_trial_histories(trial_dirs(name, paths=paths))
        if trials:
            figures.append(plots.plot_search(trials, wdir / "search.png",
                                             title=f"{name}: {len(trials)} trials",
                                             objective=search_objective(name, paths=paths)))
        tensors = preprocess.load_tensors(s.dataset, phase=phase, bin_ms=s.bin_ms,
                                          paths=paths)
        expected[s.group] = group_shapes(s.dataset, bin_ms=s.bin_ms, **trial_counts(tensors))
        members = {m["path"]: m["count"] for m in ensembles[name]["members"]}
        if refit:
            members = refit_members(ensembles[name]["members"], device=str(device), paths=paths)
        log.info("%s: averaging %d snapshots%s on the %s-phase trials", name,
                 sum(members.values()), " refitted on train+val" if refit else "", phase)
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

    save_scores(scores_path, {
        "file": str(out), "phase": phase, "scored": scores is not None,
        "reason": reason or None, "target": target, "scores": scores or [],
        "refit": refit, "models": ("refitted on train+val" if refit else
                                   "the snapshots as trained (train split)"),
        "ensembles": ensembles, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return SubmissionResult(path=out, phase=phase, scores=scores, reason=reason,
                            target=target, scores_path=scores_path, ensembles=ensembles,
                            figures=figures, refit=refit)
