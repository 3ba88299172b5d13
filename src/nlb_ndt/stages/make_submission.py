"""The make-submission stage: check every argument, then per run rank (stages.rank),
choose the members (scoring.selection), average their rates on the phase's trials
(scoring.ensemble), write the EvalAI h5 (scoring.evalai_file) and score it (scoring.
evaluation); this module only checks and composes. Each experiment of a run ranks its own
recorded snapshot kinds; experiments whose settings differ are pooled only when asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from nlb_ndt.config.layout import (
    SNAPSHOT_KINDS,
    RunSettings,
    read_trial_histories,
    run_settings,
    search_objective,
    trial_dirs,
)
from nlb_ndt.data import preprocess
from nlb_ndt.datasets import SCALING_DATASETS, SYNTHETIC_MARKER, check_phase, get_spec
from nlb_ndt.paths import get_paths
from nlb_ndt.runtime import resolve_device
from nlb_ndt.scoring import plots
from nlb_ndt.scoring.ensemble import ensemble_rates
from nlb_ndt.scoring.evalai_file import (
    SubmissionError,
    build_submission,
    group_shapes,
    trial_counts,
    warn_scaling,
    write_submission,
)
from nlb_ndt.scoring.evaluation import save_scores, score_submission
from nlb_ndt.scoring.selection import (
    SELECTORS,
    EnsembleChoice,
    NpyFiles,
    check_selection,
    ensemble_record,
    ensemble_table,
    plot_ensemble,
    write_ensemble_files,
)
from nlb_ndt.stages.rank import check_experiments, experiment_settings, rank_snapshots, work_dir
from nlb_ndt.stages.refit import refit_members

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
        ensembles: per run name, the ensemble.json content (chosen_n, argmax_n, members...).
        figures: every PNG written.
        refit: whether the models were refitted on train+val (test phase only).
        choices: per run name, the selection's EnsembleChoice.
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
    choices: dict[str, EnsembleChoice] = field(default_factory=dict)


@dataclass(frozen=True)
class SubmissionPlan:
    """make_submission's arguments, all checked (`plan_submission`) before any work: as
    given, but `runs` (name -> RunSettings), `experiments` (name -> its experiments named,
    None for all), `size` (None: the argmax), `kinds` (None: each experiment's own),
    `out`, `scores_path`, `ground_truth` and `device` resolved."""

    runs: dict[str, RunSettings]
    experiments: dict[str, tuple[str, ...] | None]
    phase: str
    method: str
    max_ensemble: int
    size: int | None
    kinds: tuple[str, ...] | None
    refit: bool
    out: Path
    scores_path: Path
    overwrite: bool
    ground_truth: Path
    device: torch.device


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


def default_snapshot_kinds(name: str, *, paths=None) -> tuple[str, ...]:
    """The kinds any experiment of run NAME ranks (aesmte3: lve, lfve); each experiment's
    own apply to its own snapshots (stages.rank.candidate_snapshots)."""
    kinds = {k for s in experiment_settings(name, paths=paths).values() for k in s.kinds}
    return tuple(k for k in SNAPSHOT_KINDS if k in kinds) or SNAPSHOT_KINDS


def _experiments_per_run(names: Sequence[str], experiments: Sequence[str] | None,
                         paths) -> dict[str, tuple[str, ...] | None]:
    """Run name -> the experiments named that are its own (None: no filter)."""
    if experiments is None:
        return {name: None for name in names}
    wanted = list(dict.fromkeys(experiments))
    folders = {name: list(experiment_settings(name, paths=paths)) for name in names}
    per_run = {name: tuple(e for e in wanted if e in folders[name]) for name in names}
    unknown = [e for e in wanted if not any(e in found for found in per_run.values())]
    for name in names:
        if unknown or not per_run[name]:
            raise ValueError(f"--experiments {','.join(unknown or wanted)}: not an "
                             f"experiment of run {name} (its experiments: "
                             f"{', '.join(folders[name]) or 'none'})")
    return per_run


def plan_submission(names: Sequence[str], *, phase: str = "val",
                    ensemble_size: int | str = "auto", max_ensemble: int = 50,
                    out: str | Path | None = None, overwrite: bool = False,
                    device: str | None = "auto", ground_truth: str | Path | None = None,
                    snapshots: Sequence[str] | None = None, ensemble_method: str = "topn",
                    refit: bool = False, experiments: Sequence[str] | None = None,
                    combine_experiments: bool = False, paths=None) -> SubmissionPlan:
    """Check every argument of `make_submission` (same arguments) before any work: the
    options, then the runs' configs, the output file and the runs' experiments and
    snapshots (listed, not scored); each failure is one line naming what is at fault."""
    paths = paths or get_paths()
    check_phase(phase)
    if refit and phase != "test":
        raise ValueError("--refit applies to --phase test only: a refit trains on the val "
                         "trials, which chose the ensemble and score the val phase")
    size = check_selection(ensemble_method, max_ensemble=max_ensemble,
                           ensemble_size=ensemble_size)
    kinds = None if snapshots is None else tuple(snapshots)
    if kinds is not None and (not kinds or set(kinds) - set(SNAPSHOT_KINDS)):
        raise ValueError(f"unknown snapshot kind(s) {', '.join(kinds) or '(none given)'}; "
                         f"choose from {', '.join(SNAPSHOT_KINDS)}")
    device = resolve_device(device)
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("name at least one run")
    runs = {name: run_settings(name, paths=paths) for name in names}
    groups = [s.group for s in runs.values()]
    if len(set(groups)) < len(groups):
        raise ValueError(f"runs {', '.join(names)} would write the same group twice "
                         f"({', '.join(groups)}); name each dataset once")
    out = Path(out) if out is not None else default_output(names, phase, paths=paths)
    for existing in (out, scores_path_for(out)):
        if existing.exists() and not overwrite:
            raise FileExistsError(f"{existing} exists; pass --overwrite to replace it")
    per_run = _experiments_per_run(names, experiments, paths)
    for name in names:
        found = check_experiments(name, kinds=kinds, experiments=per_run[name],
                                  combine=combine_experiments, paths=paths)
        if ensemble_method == "topn" and size is not None and size > len(found):
            raise ValueError(f"--ensemble-size {size}: {name} has {len(found)} snapshots")
    truth = Path(ground_truth) if ground_truth is not None else paths.eval_data_test
    return SubmissionPlan(runs, per_run, phase, ensemble_method, max_ensemble, size, kinds,
                          refit, out, scores_path_for(out), overwrite, truth, device)


def choose_ensemble(name: str, ranking: pd.DataFrame, *, spikes_heldout: np.ndarray,
                    out_dir: Path, max_ensemble: int = 50, ensemble_size: int | str = "auto",
                    method: str = "topn") -> tuple[EnsembleChoice, dict]:
    """Choose run NAME's members (scoring.selection), write ensemble.csv/json/png; return
    the choice and ensemble.json's content. Val rates are the ranking's cache, memory-
    mapped (greedy reads every candidate at each step, so all stay mapped while it runs)."""
    check_selection(method, max_ensemble=max_ensemble, ensemble_size=ensemble_size)
    rates = NpyFiles(Path(out_dir) / str(f) for f in ranking["rates_file"])
    candidates = list(rates) if method == "greedy" else rates
    try:
        choice = SELECTORS[method](candidates, spikes_heldout, max_ensemble=max_ensemble,
                                   ensemble_size=ensemble_size)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    del candidates
    rows = ranking.to_dict("records")
    record = ensemble_record(name, choice, rows)
    write_ensemble_files(out_dir, ensemble_table(choice, rows), record)
    plot_ensemble(name, choice, out_dir / "ensemble.png")
    best, topn = choice.topn_argmax_n, choice.topn_curve
    log.info("%s: best single val co-bps %.4f; top-%d mean %.4f (argmax N=%d); %s ensemble "
             "of %d (%d distinct): %.4f", name, topn[0], best, topn[best - 1], best,
             choice.method, choice.chosen_n, len(choice.members), choice.chosen_cobps)
    return choice, record


def _ensemble_for_run(name: str, run: RunSettings, plan: SubmissionPlan, paths
                      ) -> tuple[EnsembleChoice, dict, dict, list[Path]]:
    """Rank run NAME's snapshots and choose its ensemble: the choice, ensemble.json's
    content, the run's val target and the figures drawn."""
    wdir = work_dir(name, paths=paths)
    ranking = rank_snapshots(name, paths=paths, out_dir=wdir, device=plan.device,
                             kinds=plan.kinds, experiments=plan.experiments[name])
    target = preprocess.load_val_target(run.dataset, bin_ms=run.bin_ms, paths=paths)[run.group]
    choice, record = choose_ensemble(
        name, ranking, spikes_heldout=np.asarray(target["eval_spikes_heldout"]), out_dir=wdir,
        max_ensemble=plan.max_ensemble, ensemble_size=plan.size or "auto", method=plan.method)
    return choice, record, target, [wdir / "ensemble.png", *_search_plot(name, wdir, paths)]


def _search_plot(name: str, out_dir: Path, paths) -> list[Path]:
    trials = read_trial_histories(trial_dirs(name, paths=paths))
    if not trials:
        return []
    return [plots.plot_search(trials, out_dir / "search.png",
                              title=f"{name}: {len(trials)} trials",
                              objective=search_objective(name, paths=paths))]


def _phase_rates(name: str, run: RunSettings, members: list[dict], plan: SubmissionPlan,
                 paths) -> tuple[dict, dict]:
    """The members' mean rates on the phase's trials, and the group's expected shapes."""
    tensors = preprocess.load_tensors(run.dataset, phase=plan.phase, bin_ms=run.bin_ms,
                                      paths=paths)
    expected = group_shapes(run.dataset, bin_ms=run.bin_ms, **trial_counts(tensors))
    counts = {m["path"]: m["count"] for m in members}
    if plan.refit:
        counts = refit_members(members, device=str(plan.device), paths=paths)
    log.info("%s: averaging %d snapshots%s on the %s-phase trials", name,
             sum(counts.values()), " refitted on train+val" if plan.refit else "", plan.phase)
    rates = ensemble_rates(counts, train_heldin=tensors["train_spikes_heldin"],
                           eval_heldin=tensors["eval_spikes_heldin"], device=plan.device)
    return rates, expected


def _score(plan: SubmissionPlan, targets: dict) -> tuple[list[dict] | None, str, str | None]:
    """Score the file as written (read back from disk): (scores, reason unscored, target)."""
    groups = [s.group for s in plan.runs.values()]
    if plan.phase == "val":
        return (score_submission(targets, str(plan.out), groups=groups), "",
                "val split (make_eval_target_tensors, train='train', eval='val')")
    if not plan.ground_truth.is_file():
        reason = (f"no test-split ground truth at {plan.ground_truth}; fetch it with "
                  f"`python download_data.py --eval-data` and re-run with --overwrite")
    else:
        try:
            return (score_submission(str(plan.ground_truth), str(plan.out), groups=groups),
                    "", str(plan.ground_truth))
        except SubmissionError as exc:  # e.g. ground truth without this dataset's group
            reason = f"the ground truth cannot score this file: {exc}"
    log.warning("UNSCORED: %s", reason)
    return None, reason, None


def _synthetic(dataset: str, paths) -> bool:
    return (paths.data_raw / get_spec(dataset).dandiset_id / SYNTHETIC_MARKER).is_file()


def make_submission(names: Sequence[str], *, phase: str = "val",
                    ensemble_size: int | str = "auto", max_ensemble: int = 50,
                    out: str | Path | None = None, overwrite: bool = False,
                    device: str | None = "auto", ground_truth: str | Path | None = None,
                    snapshots: Sequence[str] | None = None, ensemble_method: str = "topn",
                    refit: bool = False, experiments: Sequence[str] | None = None,
                    combine_experiments: bool = False, paths=None) -> SubmissionResult:
    """Check, rank, choose the ensemble, average it for `phase`, write the h5, score it.

    Args:
        names: run names (datasets or "synthetic"); all go into one file (so the three
            scaling datasets, named together, share a file as the scorer requires).
        phase: "val" (rates on the val trials, scored against the val target) or "test"
            (rates on the test trials, scored against `paths.eval_data_test` when present).
        ensemble_size: "auto" (argmax of the val curve) or N.
        max_ensemble: M, the largest N swept (greedy: the steps it takes).
        out, overwrite: the h5 to write (default `default_output`); replace it.
        device: where models run.
        ground_truth: the test-split ground truth (default `paths.eval_data_test`).
        snapshots: the snapshot kinds ranked in every experiment (default: each
            experiment's own, recorded from its profile; else all three).
        ensemble_method: "topn" (AESMTE3) or "greedy" (forward selection with replacement).
        refit: test phase only: average models retrained on train+val (stages.refit).
        experiments: only these experiments' snapshots are candidates (default: all).
        combine_experiments: pool experiments whose settings (profile, objective, kinds)
            differ, each ranked with its own (without it, they are refused).
        paths: resolved paths (default: from the environment).

    Returns:
        A SubmissionResult (the scores are also written to `scores_path_for(out)`).
    """
    paths = paths or get_paths()
    plan = plan_submission(
        names, phase=phase, ensemble_size=ensemble_size, max_ensemble=max_ensemble, out=out,
        overwrite=overwrite, device=device, ground_truth=ground_truth, snapshots=snapshots,
        ensemble_method=ensemble_method, refit=refit, experiments=experiments,
        combine_experiments=combine_experiments, paths=paths)
    rates, expected, ensembles, choices, figures, targets = {}, {}, {}, {}, [], {}
    for name, run in plan.runs.items():
        choices[name], ensembles[name], targets[run.group], pngs = _ensemble_for_run(
            name, run, plan, paths)
        figures += pngs
        rates[run.group], expected[run.group] = _phase_rates(
            name, run, ensembles[name]["members"], plan, paths)
    warn_scaling([s.group for s in plan.runs.values() if not _synthetic(s.dataset, paths)])
    write_submission(build_submission(rates, expected=expected), plan.out,
                     overwrite=plan.overwrite)
    scores, reason, target = _score(plan, targets)
    save_scores(plan.scores_path, {
        "file": str(plan.out), "phase": phase, "scored": scores is not None,
        "reason": reason or None, "target": target, "scores": scores or [],
        "refit": refit, "models": ("refitted on train+val" if refit else
                                   "the snapshots as trained (train split)"),
        "ensembles": ensembles, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return SubmissionResult(path=plan.out, phase=phase, scores=scores, reason=reason,
                            target=target, scores_path=plan.scores_path, ensembles=ensembles,
                            figures=figures, refit=refit, choices=choices)
