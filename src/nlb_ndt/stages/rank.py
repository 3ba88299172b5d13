"""Score every snapshot of a run's search on the val split and rank them (models.csv).

A run NAME (a dataset name or "synthetic") has a rendered config `$CONFIG_DIR/<NAME>.yaml`
whose DATA.DATASET and DATA.BIN_MS say which data it trained on, and experiments under
`$RAY_TUNE_HOME/<NAME>/<experiment>/<trial_dir>/ckpts/<trial_id>.<lve|lfve|cobps>.pth`.

`rank_snapshots` scores each snapshot's six val-phase rate arrays with nlb_tools'
`evaluate` against the val target and writes `models.csv`, best val co-bps first, with the
released AESMTE3 archive's columns (trial_id, val_ckpt, co-bps), the other metrics, the
snapshot's experiment, profile, model family and file, and the trial's hyperparameters.
Each snapshot's `eval_rates_heldout` is cached in `val_rates/` (all the ensemble choice
needs); a re-run scores only new or changed snapshots, and identical weights count once.

A run can hold several experiments (e.g. `mc_maze-s42` and `mc_maze-s42-aesmte3`), each
with its settings in experiment_info.json (`experiment_settings`): its own snapshot kinds
pick its candidates unless `kinds` names them for all (`candidate_snapshots`), and
`check_experiments` refuses to pool experiments whose settings differ unless asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from nlb_ndt.atomic import atomic_write
from nlb_ndt.config.layout import (
    EXPERIMENT_INFO_FILE,
    OBJECTIVES,
    SNAPSHOT_KINDS,
    RunSettings,
    Snapshot,
    find_snapshots,
    run_settings,
    trial_hyperparameters,
)
from nlb_ndt.config.typed import model_family
from nlb_ndt.data import preprocess
from nlb_ndt.model.inference import snapshot_rates
from nlb_ndt.paths import Paths, get_paths
from nlb_ndt.runtime import resolve_device
from nlb_ndt.scoring.evaluation import score_submission

log = logging.getLogger(__name__)

RANKING_FILE = "models.csv"
RATES_DIR = "val_rates"
METRIC_COLUMNS = ("co-bps", "fp-bps", "vel R2", "tp corr", "psth R2")
_LEAD_COLUMNS = ("trial_id", "val_ckpt", *METRIC_COLUMNS, "experiment", "profile", "family",
                 "trial_dir", "path", "mtime_ns", "epoch", "rates_file", "weights",
                 "same_weights_as")
#: Columns a reused models.csv row must have; a row without one is scored again.
_REUSE_NEEDS = ("weights", "family")


@dataclass(frozen=True)
class ExperimentSettings:
    """One experiment folder's recorded settings ("" for snapshots outside one): profile
    (None: none), objective and the snapshot kinds it ranks (defaults: the original's
    objective, all kinds), and whether an experiment_info.json was `recorded`."""

    experiment: str
    profile: str | None = None
    objective: str = next(iter(OBJECTIVES))
    kinds: tuple[str, ...] = SNAPSHOT_KINDS
    recorded: bool = False


def _read_settings(folder: Path) -> ExperimentSettings:
    """An experiment folder's settings from its experiment_info.json, else the defaults."""
    info_path = folder / EXPERIMENT_INFO_FILE
    try:
        info = json.loads(info_path.read_text()) if info_path.is_file() else None
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); taking the default settings", info_path, exc)
        info = None
    if not isinstance(info, dict):
        return ExperimentSettings(folder.name)
    kinds = tuple(k for k in SNAPSHOT_KINDS if k in (info.get("snapshots") or ()))
    return ExperimentSettings(folder.name, profile=info.get("profile") or None,
                              objective=str(info.get("objective") or next(iter(OBJECTIVES))),
                              kinds=kinds or SNAPSHOT_KINDS, recorded=True)


def experiment_settings(name: str, *, paths: Paths | None = None
                        ) -> dict[str, ExperimentSettings]:
    """Each experiment folder of run NAME -> its recorded settings, in folder order."""
    root = (paths or get_paths()).ray_tune_home / name
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return {folder.name: _read_settings(folder) for folder in folders}


def settings_of(settings: Mapping[str, ExperimentSettings], experiment: str
                ) -> ExperimentSettings:
    """`settings[experiment]`, or the defaults for an experiment that recorded nothing."""
    return settings.get(experiment) or ExperimentSettings(experiment)


def candidate_snapshots(name: str, *, paths: Paths | None = None,
                        kinds: Sequence[str] | None = None,
                        experiments: Sequence[str] | None = None) -> list[Snapshot]:
    """The snapshots of run NAME that are ranking candidates, sorted by path: of the
    `experiments` named (default all), of `kinds` (default: each experiment's own).

    Raises:
        ValueError: an unknown snapshot kind.
        FileNotFoundError: no candidate at all.
    """
    paths = paths or get_paths()
    if kinds is not None:
        found = find_snapshots(name, paths=paths, kinds=kinds, experiments=experiments)
    else:
        settings = experiment_settings(name, paths=paths)
        found = [snap for snap in find_snapshots(name, paths=paths, experiments=experiments)
                 if snap.val_ckpt in settings_of(settings, snap.experiment).kinds]
    if not found:
        wanted = "|".join(kinds or SNAPSHOT_KINDS)
        raise FileNotFoundError(
            f"no snapshots (ckpts/<trial>.<{wanted}>.pth) under "
            f"{paths.ray_tune_home / name}; run `python run_hyperopt.py {name}` first")
    return found


def _describe(settings: ExperimentSettings, keys: Sequence[str]) -> str:
    words = {"profile": f"profile {settings.profile or 'none'}",
             "objective": f"objective {settings.objective}",
             "kinds": f"snapshots {','.join(settings.kinds)}"}
    return f"{settings.experiment or '(no experiment folder)'} (" + \
        ", ".join(words[key] for key in keys) + ")"


def check_experiments(name: str, *, kinds: Sequence[str] | None = None,
                      experiments: Sequence[str] | None = None, combine: bool = False,
                      paths: Paths | None = None) -> list[Snapshot]:
    """`candidate_snapshots`, refusing unless `combine` to pool experiments whose settings
    (profile, objective, and the kinds ranked: `kinds`, else each one's own) differ, in
    one line naming two of them, how they differ and how to proceed."""
    snapshots = candidate_snapshots(name, paths=paths, kinds=kinds, experiments=experiments)
    recorded = experiment_settings(name, paths=paths)
    used: dict[str, ExperimentSettings] = {}
    for snap in snapshots:
        if snap.experiment not in used:
            settings = settings_of(recorded, snap.experiment)
            used[snap.experiment] = (settings if kinds is None
                                     else replace(settings, kinds=tuple(kinds)))
    first, *others = used.values()
    for other in others:
        keys = [k for k in ("profile", "objective", "kinds")
                if getattr(first, k) != getattr(other, k)]
        if keys and not combine:
            raise ValueError(
                f"run {name}: experiments {_describe(first, keys)} and "
                f"{_describe(other, keys)} differ; pick some with --experiments NAME,... "
                f"or pool them, each with its own settings, with --combine-experiments")
    if len(used) > 1:
        log.info("%s: pooling the snapshots of experiments %s", name, ", ".join(used))
    return snapshots


def work_dir(name: str, *, paths: Paths | None = None) -> Path:
    """Where run NAME's ranking, ensemble curve and submissions go by default."""
    return (paths or get_paths()).submissions_dir / name


def _progress(items: Sequence, desc: str) -> Iterable:
    return tqdm(items, desc=desc, unit="snapshot", disable=not sys.stderr.isatty())


def _rates_file(snap: Snapshot) -> str:
    digest = hashlib.sha1(str(snap.path).encode()).hexdigest()[:8]
    return f"{RATES_DIR}/{snap.trial_id}.{snap.val_ckpt}.{digest}.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def read_ranking(path: str | Path) -> pd.DataFrame:
    """A models.csv (ours or the released archive's) sorted by val co-bps, best first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ranking at {path}")
    # Ray's ids are hex strings that pandas would read as numbers ("00000012",
    # "1e500000" = inf), so trial_id is always read as text.
    df = pd.read_csv(path, index_col=0,
                     dtype={"trial_id": str, "val_ckpt": str, "weights": str,
                            "same_weights_as": str, "experiment": str, "profile": str,
                            "family": str})
    if "same_weights_as" in df.columns:
        df["same_weights_as"] = df["same_weights_as"].fillna("")
    missing = [c for c in ("trial_id", "val_ckpt", "co-bps") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.sort_values("co-bps", ascending=False, kind="stable")


def _score_one(snap: Snapshot, settings: RunSettings, tensors: dict, target: dict,
               out_dir: Path, device: str) -> dict:
    rates, info = snapshot_rates(snap.path, train_heldin=tensors["train_spikes_heldin"],
                                 eval_heldin=tensors["eval_spikes_heldin"], device=device,
                                 expect=(settings.dataset, settings.bin_ms), digest=True)
    (scores,) = score_submission({settings.group: target[settings.group]},
                                 {settings.group: rates}, groups=[settings.group])
    rates_file = _rates_file(snap)
    _save_npy(out_dir / rates_file, rates["eval_rates_heldout"])
    return {"trial_id": snap.trial_id, "val_ckpt": snap.val_ckpt,
            **{m: scores[m] for m in METRIC_COLUMNS if m in scores},
            "experiment": snap.experiment, "family": model_family(info["cfg"].MODEL),
            "trial_dir": str(snap.trial_dir), "path": str(snap.path),
            "mtime_ns": snap.mtime_ns, "epoch": info.get("epoch"),
            "rates_file": rates_file, "weights": info["weights_sha1"],
            **trial_hyperparameters(snap.trial_dir)}


def _earlier_rows(csv_path: Path, out_dir: Path, wanted: set[str]
                  ) -> tuple[dict[tuple[str, int], dict], list[dict]]:
    """Rows of an earlier models.csv: the candidates' by (path, mtime_ns), and the others
    (snapshots still on disk that are not candidates this time, kept in models.csv)."""
    known: dict[tuple[str, int], dict] = {}
    others = []
    if not csv_path.is_file():
        return known, others
    for row in read_ranking(csv_path).to_dict("records"):
        if not (out_dir / str(row.get("rates_file"))).is_file() or \
                not all(isinstance(row.get(key), str) for key in _REUSE_NEEDS):
            continue  # scored by an older version (no weight digest or family): score again
        if str(row["path"]) in wanted:
            known[(str(row["path"]), int(row["mtime_ns"]))] = row
        elif Path(str(row["path"])).is_file():
            others.append(row)
    return known, others


def _score_new(name: str, todo: Sequence[Snapshot], settings: RunSettings, *, paths: Paths,
               out_dir: Path, device: str | None) -> tuple[list[dict], list[str]]:
    """Score the snapshots `todo` on val: their rows, and one error line per failure."""
    rows: list[dict] = []
    errors: list[str] = []
    if not todo:
        return rows, errors
    tensors = preprocess.load_tensors(settings.dataset, phase="val", bin_ms=settings.bin_ms,
                                      paths=paths)
    target = preprocess.load_val_target(settings.dataset, bin_ms=settings.bin_ms, paths=paths)
    device = resolve_device(device)
    for snap in _progress(todo, f"scoring {name}"):
        try:
            rows.append(_score_one(snap, settings, tensors, target, out_dir, device))
        except Exception as exc:  # noqa: BLE001 - a bad snapshot must not stop the rest
            log.warning("skipping %s: %s", snap.path, exc)
            errors.append(f"{snap.path}: {exc}")
    return rows, errors


def _ranking_table(rows: list[dict], wanted: set[str]) -> pd.DataFrame:
    """models.csv's table: lead columns first, best val co-bps first, and each copy of
    another file's weights pointing at that file (a candidate when there is one)."""
    df = pd.DataFrame(rows).drop(columns="same_weights_as", errors="ignore")
    lead = [c for c in _LEAD_COLUMNS if c in df.columns]
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    df = df.sort_values(["co-bps", "path"], ascending=[False, True], kind="stable")
    df = df.reset_index(drop=True)
    candidate = df["path"].isin(wanted)
    keep_first = df.assign(_other=~candidate).sort_values("_other", kind="stable")
    first_path = df["weights"].map(keep_first.groupby("weights", sort=False)["path"].first())
    df.insert(df.columns.get_loc("weights") + 1, "same_weights_as",
              first_path.where(first_path != df["path"], ""))
    return df


def rank_snapshots(name: str, *, paths: Paths | None = None, out_dir: str | Path | None = None,
                   device: str | None = "auto", kinds: Sequence[str] | None = None,
                   experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """Score new or changed snapshots of run NAME on val and (re)write `models.csv`.

    Snapshots with identical weights (e.g. lve and cobps saved at one epoch) count once:
    models.csv marks the later ones in `same_weights_as`; the ranking leaves them out.

    Args:
        name: the run name.
        paths: resolved paths (default: from the environment).
        out_dir: where models.csv and val_rates/ live (default `work_dir(name)`).
        device: where models run ("auto", "cpu", "cuda").
        kinds: the snapshot kinds ranked in every experiment (default: each one's own).
        experiments: only snapshots of these experiment folders are candidates (default:
            every experiment of the run). Rows left out stay in models.csv.

    Returns:
        The candidates, best val co-bps first.

    Raises:
        FileNotFoundError: no snapshots, or no config for NAME.
        RuntimeError: every new snapshot failed to score (the first error is quoted).
    """
    paths = paths or get_paths()
    settings = run_settings(name, paths=paths)
    out_dir = Path(out_dir) if out_dir is not None else work_dir(name, paths=paths)
    snapshots = candidate_snapshots(name, paths=paths, kinds=kinds, experiments=experiments)
    wanted = {str(snap.path) for snap in snapshots}
    csv_path = out_dir / RANKING_FILE
    known, others = _earlier_rows(csv_path, out_dir, wanted)
    rows = [known[key] for key in ((str(s.path), s.mtime_ns) for s in snapshots) if key in known]
    todo = [s for s in snapshots if (str(s.path), s.mtime_ns) not in known]
    log.info("%s: %d snapshots, %d already scored, %d to score", name, len(snapshots),
             len(rows), len(todo))
    scored, errors = _score_new(name, todo, settings, paths=paths, out_dir=out_dir,
                                device=device)
    rows += scored
    if not rows:
        raise RuntimeError(f"no snapshot of {name} could be scored; first error: {errors[0]}")
    if errors:
        log.warning("%d of %d snapshots could not be scored (they are retried on the next "
                    "run); first: %s", len(errors), len(snapshots), errors[0])
    recorded = experiment_settings(name, paths=paths)
    for row in rows + others:
        experiment = row.get("experiment")
        experiment = experiment if isinstance(experiment, str) else ""
        row["profile"] = settings_of(recorded, experiment).profile
    df = _ranking_table(rows + others, wanted)
    with atomic_write(csv_path) as tmp:
        df.to_csv(tmp)
    candidate = df["path"].isin(wanted)
    ranking = df[candidate & (df["same_weights_as"] == "")].reset_index(drop=True)
    log.info("wrote %s (%d snapshots; %d candidates of kinds %s, %d left out as copies of "
             "another's weights; best val co-bps %.4f: %s.%s)", csv_path, len(df),
             len(ranking), ",".join(sorted(set(ranking["val_ckpt"]))),
             int((candidate & (df["same_weights_as"] != "")).sum()), ranking["co-bps"].iloc[0],
             ranking["trial_id"].iloc[0], ranking["val_ckpt"].iloc[0])
    return ranking
