"""Score every snapshot of a run's search on the val split, and average snapshots' rates.

A run NAME (a dataset name or "synthetic") has a rendered config `$CONFIG_DIR/<NAME>.yaml`
whose DATA.DATASET and DATA.BIN_MS say which data it trained on, and experiments under
`$RAY_TUNE_HOME/<NAME>/<experiment>/<trial_dir>/ckpts/<trial_id>.<lve|lfve|cobps>.pth`.

`rank_snapshots` loads each snapshot, computes its six val-phase rate arrays, scores them
with nlb_tools' `evaluate` against the val target (co-bps, fp-bps, vel R2 or tp corr,
psth R2) and writes `models.csv`, sorted by val co-bps (best first), with the columns of
the released AESMTE3 archive (trial_id, val_ckpt, co-bps) plus the other metrics, where the
snapshot is, and the trial's hyperparameters. Each snapshot's `eval_rates_heldout` is
cached in `val_rates/` beside it, which is all the ensemble-size sweep needs. Re-running
scores only snapshots that are new or changed (keyed by path and modification time).

Snapshots with the same weights count once, and `kinds` limits the candidates.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import preprocess
from .atomic import atomic_write
from .evaluation import score_submission
from .inference import snapshot_rates
from .paths import Paths, get_paths
from .runs import (
    SNAPSHOT_KINDS,
    RunSettings,
    Snapshot,
    find_snapshots,
    run_settings,
    trial_hyperparameters,
)
from .runtime import resolve_device

log = logging.getLogger(__name__)

RANKING_FILE = "models.csv"
RATES_DIR = "val_rates"
METRIC_COLUMNS = ("co-bps", "fp-bps", "vel R2", "tp corr", "psth R2")
_LEAD_COLUMNS = ("trial_id", "val_ckpt", *METRIC_COLUMNS, "experiment", "trial_dir", "path",
                 "mtime_ns", "epoch", "rates_file", "weights", "same_weights_as")


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
                            "same_weights_as": str})
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
            "experiment": snap.experiment, "trial_dir": str(snap.trial_dir),
            "path": str(snap.path), "mtime_ns": snap.mtime_ns, "epoch": info.get("epoch"),
            "rates_file": rates_file, "weights": info["weights_sha1"],
            **trial_hyperparameters(snap.trial_dir)}


def rank_snapshots(name: str, *, paths: Paths | None = None, out_dir: str | Path | None = None,
                   device: str | None = "auto", kinds: Sequence[str] = SNAPSHOT_KINDS,
                   experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """Score new or changed snapshots of run NAME on val and (re)write `models.csv`.

    Snapshots with identical weights (a trial whose lve and cobps were saved at the same
    epoch) count once: models.csv marks the later ones in `same_weights_as`, and the
    ranking returned leaves them out.

    Args:
        name: the run name.
        paths: resolved paths (default: from the environment).
        out_dir: where models.csv and val_rates/ live (default `work_dir(name)`).
        device: where models run ("auto", "cpu", "cuda").
        kinds: the snapshot kinds that are candidates (default all three).
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
    kinds = tuple(kinds)
    snapshots = find_snapshots(name, paths=paths, kinds=kinds, experiments=experiments)
    wanted = {str(snap.path) for snap in snapshots}
    if not snapshots:
        raise FileNotFoundError(
            f"no snapshots (ckpts/<trial>.<{'|'.join(kinds)}>.pth) under "
            f"{paths.ray_tune_home / name}; run `python run_hyperopt.py {name}` first")
    csv_path = out_dir / RANKING_FILE
    known: dict[tuple[str, int], dict] = {}
    others = []  # rows of kinds not asked for this time: kept in models.csv
    if csv_path.is_file():
        for row in read_ranking(csv_path).to_dict("records"):
            if not (out_dir / str(row.get("rates_file"))).is_file() or \
                    not isinstance(row.get("weights"), str):
                continue  # scored by an older version (no weight digest): score again
            if str(row["path"]) in wanted:
                known[(str(row["path"]), int(row["mtime_ns"]))] = row
            elif Path(str(row["path"])).is_file():
                others.append(row)
    rows, todo = [], []
    for snap in snapshots:
        row = known.get((str(snap.path), snap.mtime_ns))
        if row is None:
            todo.append(snap)
        else:
            rows.append(row)
    log.info("%s: %d snapshots, %d already scored, %d to score", name, len(snapshots),
             len(rows), len(todo))
    errors = []
    if todo:
        tensors = preprocess.load_tensors(settings.dataset, phase="val",
                                          bin_ms=settings.bin_ms, paths=paths)
        target = preprocess.load_val_target(settings.dataset, bin_ms=settings.bin_ms,
                                            paths=paths)
        device = resolve_device(device)
        for snap in _progress(todo, f"scoring {name}"):
            try:
                rows.append(_score_one(snap, settings, tensors, target, out_dir, device))
            except Exception as exc:  # noqa: BLE001 - a bad snapshot must not stop the rest
                log.warning("skipping %s: %s", snap.path, exc)
                errors.append(f"{snap.path}: {exc}")
    if not rows:
        raise RuntimeError(f"no snapshot of {name} could be scored; first error: {errors[0]}")
    if errors:
        log.warning("%d of %d snapshots could not be scored (they are retried on the next "
                    "run); first: %s", len(errors), len(snapshots), errors[0])
    df = pd.DataFrame(rows + others).drop(columns="same_weights_as", errors="ignore")
    lead = [c for c in _LEAD_COLUMNS if c in df.columns]
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    df = df.sort_values(["co-bps", "path"], ascending=[False, True], kind="stable")
    df = df.reset_index(drop=True)
    # Copies point at the first file with the same weights, a candidate when there is one.
    candidate = df["path"].isin(wanted)
    keep_first = df.assign(_other=~candidate).sort_values("_other", kind="stable")
    first_path = df["weights"].map(keep_first.groupby("weights", sort=False)["path"].first())
    df.insert(df.columns.get_loc("weights") + 1, "same_weights_as",
              first_path.where(first_path != df["path"], ""))
    with atomic_write(csv_path) as tmp:
        df.to_csv(tmp)
    ranking = df[candidate & (df["same_weights_as"] == "")].reset_index(drop=True)
    n_same = int((candidate & (df["same_weights_as"] != "")).sum())
    log.info("wrote %s (%d snapshots; %d candidates of kinds %s, %d left out as copies of "
             "another's weights; best val co-bps %.4f: %s.%s)", csv_path, len(df),
             len(ranking), ",".join(kinds), n_same, ranking["co-bps"].iloc[0],
             ranking["trial_id"].iloc[0], ranking["val_ckpt"].iloc[0])
    return ranking


def cached_heldout(ranking: pd.DataFrame, out_dir: str | Path) -> Iterator[np.ndarray]:
    """Each ranked snapshot's cached val `eval_rates_heldout`, in ranking order, lazily."""
    for rates_file in ranking["rates_file"]:
        yield np.load(Path(out_dir) / rates_file)
