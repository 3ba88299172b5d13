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

`ensemble_rates` streams checkpoints one at a time into a running mean (the memory of one
model's rates plus one float64 sum, whatever N is); the submission and the validator both
use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from .atomic import atomic_write
from .datasets import get_spec
from .ensemble import RunningMean
from .paths import Paths, get_paths

log = logging.getLogger(__name__)

RANKING_FILE = "models.csv"
RATES_DIR = "val_rates"
SNAPSHOT_KINDS = ("lve", "lfve", "cobps")
METRIC_COLUMNS = ("co-bps", "fp-bps", "vel R2", "tp corr", "psth R2")
_LEAD_COLUMNS = ("trial_id", "val_ckpt", *METRIC_COLUMNS, "experiment", "trial_dir", "path",
                 "mtime_ns", "epoch", "rates_file")


@dataclass(frozen=True)
class RunSettings:
    """What a run NAME trained on."""

    name: str
    dataset: str
    bin_ms: int

    @property
    def group(self) -> str:
        """The submission / target group, e.g. "mc_maze" or "mc_maze_20"."""
        return get_spec(self.dataset).group(self.bin_ms)


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file of one trial."""

    path: Path
    trial_id: str
    val_ckpt: str  # "lve" | "lfve" | "cobps"
    experiment: str
    trial_dir: Path
    mtime_ns: int


def run_settings(name: str, *, paths: Paths | None = None) -> RunSettings:
    """DATA.DATASET and DATA.BIN_MS of run NAME.

    Read from `$CONFIG_DIR/<NAME>.yaml`; if that is missing, from the config.yaml of any
    trial of the run's experiments (e.g. experiments copied from another machine).
    """
    from .config import load_config

    paths = paths or get_paths()
    candidates = [paths.config_dir / f"{name}.yaml"]
    candidates += sorted((paths.ray_tune_home / name).glob("*/*/config.yaml"))[:1]
    for path in candidates:
        if path.is_file():
            cfg = load_config(path)
            get_spec(cfg.DATA.DATASET)  # a clear error for a bad dataset name
            return RunSettings(name, cfg.DATA.DATASET, int(cfg.DATA.BIN_MS))
    raise FileNotFoundError(
        f"no config for run {name!r}: looked for {candidates[0]} and for trials under "
        f"{paths.ray_tune_home / name}; run `python generate_all_configs.py` and "
        f"`python run_hyperopt.py {name}` first")


def work_dir(name: str, *, paths: Paths | None = None) -> Path:
    """Where run NAME's ranking, ensemble curve and submissions go by default."""
    return (paths or get_paths()).submissions_dir / name


def find_snapshots(name: str, *, paths: Paths | None = None) -> list[Snapshot]:
    """Every `ckpts/<trial_id>.<kind>.pth` under `$RAY_TUNE_HOME/<NAME>/`, sorted by path.

    Snapshots of `--smoke-test` experiments (a few epochs each) count only when the run
    has nothing else, so a smoke test never slips into a real ensemble.
    """
    root = (paths or get_paths()).ray_tune_home / name
    found = []
    for path in sorted(root.rglob("*.pth")) if root.is_dir() else []:
        stem, _, kind = path.stem.rpartition(".")
        if kind not in SNAPSHOT_KINDS or not stem or path.parent.name != "ckpts":
            continue
        rel = path.relative_to(root)
        found.append(Snapshot(path=path.resolve(), trial_id=stem, val_ckpt=kind,
                              experiment=rel.parts[0] if len(rel.parts) > 3 else "",
                              trial_dir=path.parent.parent.resolve(),
                              mtime_ns=path.stat().st_mtime_ns))
    real = [s for s in found if not _is_smoke(s.experiment)]
    if real and len(real) < len(found):
        log.info("leaving out %d snapshots of smoke-test experiments",
                    len(found) - len(real))
        return real
    return found


def _is_smoke(experiment: str) -> bool:
    """Whether an experiment folder name is a --smoke-test one (`<name>-s<seed>...-smoke[-n]`)."""
    return "-smoke" in experiment


def trial_dirs(name: str, *, paths: Paths | None = None) -> list[Path]:
    """Every trial folder (one holding a metrics.csv) under `$RAY_TUNE_HOME/<NAME>/`."""
    root = (paths or get_paths()).ray_tune_home / name
    return sorted({p.parent for p in root.rglob("metrics.csv")}) if root.is_dir() else []


def trial_hyperparameters(trial_dir: Path) -> dict[str, object]:
    """The searched hyperparameters of a trial (Ray's params.json), flattened to dotted keys."""
    from .config import flatten

    path = Path(trial_dir) / "params.json"
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); hyperparameters left out", path, exc)
        return {}
    flat = flatten(params) if isinstance(params, dict) else {}
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)
            for k, v in flat.items()}


def _progress(items: Sequence, desc: str) -> Iterable:
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="snapshot", disable=not sys.stderr.isatty())


def snapshot_rates(path: Path, *, train_heldin: np.ndarray, eval_heldin: np.ndarray,
                   device: str = "cpu", settings: RunSettings | None = None) -> dict:
    """The six submission arrays of one snapshot (float32 spikes per bin).

    Raises ValueError if `settings` is given and the snapshot was trained on other data.
    """
    return _rates_and_info(path, train_heldin=train_heldin, eval_heldin=eval_heldin,
                           device=device, settings=settings)[0]


def _rates_and_info(path: Path, *, train_heldin: np.ndarray, eval_heldin: np.ndarray,
                    device: str, settings: RunSettings | None) -> tuple[dict, dict]:
    from .checkpoint import load_model
    from .inference import submission_rates

    model, info = load_model(path, device=device)
    if settings is not None and info.get("format") == "nlb_ndt":
        data = (info["cfg"].DATA.DATASET, int(info["cfg"].DATA.BIN_MS))
        if data != (settings.dataset, settings.bin_ms):
            raise ValueError(f"{path} was trained on {data[0]} at {data[1]} ms, not on "
                             f"{settings.dataset} at {settings.bin_ms} ms")
    rates = submission_rates(model, train_heldin=train_heldin, eval_heldin=eval_heldin)
    return rates, info


def ensemble_rates(checkpoints: Iterable[str | Path], *, train_heldin: np.ndarray,
                   eval_heldin: np.ndarray, device: str = "cpu") -> dict[str, np.ndarray]:
    """Mean of the six submission arrays over `checkpoints`, loading one model at a time."""
    running = RunningMean()
    checkpoints = list(checkpoints)
    for path in _progress(checkpoints, "ensemble"):
        log.info("rates of %s", path)
        # No reference to a member's rates outlives `add`: peak memory is one member.
        running.add(snapshot_rates(Path(path), train_heldin=train_heldin,
                                   eval_heldin=eval_heldin, device=device))
    return running.mean()


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
    df = pd.read_csv(path, index_col=0, dtype={"trial_id": str, "val_ckpt": str})
    missing = [c for c in ("trial_id", "val_ckpt", "co-bps") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.sort_values("co-bps", ascending=False, kind="stable")


def _score_one(snap: Snapshot, settings: RunSettings, tensors: dict, target: dict,
               out_dir: Path, device: str) -> dict:
    from .evaluation import score_submission

    rates, info = _rates_and_info(snap.path, train_heldin=tensors["train_spikes_heldin"],
                                  eval_heldin=tensors["eval_spikes_heldin"], device=device,
                                  settings=settings)
    (scores,) = score_submission({settings.group: target[settings.group]},
                                 {settings.group: rates}, groups=[settings.group])
    rates_file = _rates_file(snap)
    _save_npy(out_dir / rates_file, rates["eval_rates_heldout"])
    return {"trial_id": snap.trial_id, "val_ckpt": snap.val_ckpt,
            **{m: scores[m] for m in METRIC_COLUMNS if m in scores},
            "experiment": snap.experiment, "trial_dir": str(snap.trial_dir),
            "path": str(snap.path), "mtime_ns": snap.mtime_ns, "epoch": info.get("epoch"),
            "rates_file": rates_file,
            **trial_hyperparameters(snap.trial_dir)}


def rank_snapshots(name: str, *, paths: Paths | None = None, out_dir: str | Path | None = None,
                   device: str | None = "auto") -> pd.DataFrame:
    """Score new or changed snapshots of run NAME on val and (re)write `models.csv`.

    Args:
        name: the run name.
        paths: resolved paths (default: from the environment).
        out_dir: where models.csv and val_rates/ live (default `work_dir(name)`).
        device: where models run ("auto", "cpu", "cuda").

    Returns:
        The ranking, best val co-bps first (the rows of models.csv).

    Raises:
        FileNotFoundError: no snapshots, or no config for NAME.
        RuntimeError: every new snapshot failed to score (the first error is quoted).
    """
    from . import preprocess

    paths = paths or get_paths()
    settings = run_settings(name, paths=paths)
    out_dir = Path(out_dir) if out_dir is not None else work_dir(name, paths=paths)
    snapshots = find_snapshots(name, paths=paths)
    if not snapshots:
        raise FileNotFoundError(
            f"no snapshots (ckpts/<trial>.<lve|lfve|cobps>.pth) under "
            f"{paths.ray_tune_home / name}; run `python run_hyperopt.py {name}` first")
    csv_path = out_dir / RANKING_FILE
    known: dict[tuple[str, int], dict] = {}
    if csv_path.is_file():
        for row in read_ranking(csv_path).to_dict("records"):
            if (out_dir / str(row.get("rates_file"))).is_file():
                known[(str(row["path"]), int(row["mtime_ns"]))] = row
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
        from .train import resolve_device

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
    df = pd.DataFrame(rows)
    lead = [c for c in _LEAD_COLUMNS if c in df.columns]
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    df = df.sort_values(["co-bps", "path"], ascending=[False, True], kind="stable")
    df = df.reset_index(drop=True)
    with atomic_write(csv_path) as tmp:
        df.to_csv(tmp)
    log.info("wrote %s (%d snapshots; best val co-bps %.4f: %s.%s)", csv_path, len(df),
             df["co-bps"].iloc[0], df["trial_id"].iloc[0], df["val_ckpt"].iloc[0])
    return df


def cached_heldout(ranking: pd.DataFrame, out_dir: str | Path) -> Iterator[np.ndarray]:
    """Each ranked snapshot's cached val `eval_rates_heldout`, in ranking order, lazily."""
    for rates_file in ranking["rates_file"]:
        yield np.load(Path(out_dir) / rates_file)
