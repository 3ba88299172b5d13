"""What a run, trial or experiment folder holds: file names, snapshot kinds, and readers.

Training writes these folders and the ranking, the submission and the plots read them, so
the names live here once and both sides import them.

    RAY_TUNE_HOME/<run name>/<experiment>/         one experiment of a search
        experiment_info.json  base_config.yaml  search_space.json  trials.csv
        trial_<index>_<trial id>/                  one trial = one run folder
            config.yaml  run_info.json  metrics.csv  trial.log  state.pt  state.prev.pt  tb/
            ckpts/<trial id>.<lve|lfve|cobps>.pth
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from nlb_ndt.config.defaults import flatten, load_config
from nlb_ndt.datasets import get_spec
from nlb_ndt.paths import Paths, get_paths

log = logging.getLogger(__name__)

# Files of a run folder (a trial's, or a single run's from train.py).
CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run_info.json"
METRICS_FILE = "metrics.csv"
STATE_FILE = "state.pt"
STATE_BACKUP_FILE = "state.prev.pt"  # the state.pt that the last save replaced
TRIAL_LOG = "trial.log"
PARAMS_FILE = "params.json"  # Ray's record of a trial's suggestion
SNAPSHOT_DIR = "ckpts"
REFIT_DIR = "refit"  # a trial's refits on train+val (nlb_ndt.stages.refit): not trials themselves

# Files of an experiment folder.
EXPERIMENT_INFO_FILE = "experiment_info.json"
BASE_CONFIG_FILE = "base_config.yaml"
SEARCH_SPACE_FILE = "search_space.json"
TRIALS_FILE = "trials.csv"

#: The snapshots of a run, each overwritten when its metric improves:
#: lve = lowest masked val loss, lfve = lowest unmasked val loss, cobps = best val co-bps.
SNAPSHOT_KINDS = ("lve", "lfve", "cobps")
#: The last epoch's model of a run without a val split (a refit on train+val); never ranked.
FINAL_KIND = "final"
#: Columns of metrics.csv, one row per validation.
METRIC_FIELDS = ("epoch", "train_loss", "lr", "masked_loss", "unmasked_loss", "val_cobps",
                 "best_masked_loss", "best_unmasked_loss", "best_val_cobps", "done",
                 "seconds")
#: Search objectives (what trials report) and their direction; the first is the original's.
OBJECTIVES = {"best_masked_loss": "min", "best_val_cobps": "max"}


def snapshot_path(run_dir: str | Path, trial_id: str, kind: str,
                  checkpoint_dir: str | Path = SNAPSHOT_DIR) -> Path:
    """`<run_dir>/<checkpoint_dir>/<trial_id>.<kind>.pth` (checkpoint_dir may be absolute)."""
    if kind not in (*SNAPSHOT_KINDS, FINAL_KIND):
        raise ValueError(f"unknown snapshot kind {kind!r}; kinds: {', '.join(SNAPSHOT_KINDS)}")
    folder = Path(checkpoint_dir)
    if not folder.is_absolute():
        folder = Path(run_dir) / folder
    return folder / f"{trial_id}.{kind}.pth"


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
    val_ckpt: str  # one of SNAPSHOT_KINDS
    experiment: str
    trial_dir: Path
    mtime_ns: int


def run_settings(name: str, *, paths: Paths | None = None) -> RunSettings:
    """DATA.DATASET and DATA.BIN_MS of run NAME.

    Read from `$CONFIG_DIR/<NAME>.yaml`; if that is missing, from the config.yaml of any
    trial of the run's experiments (e.g. experiments copied from another machine).
    """
    paths = paths or get_paths()
    candidates = [paths.config_dir / f"{name}.yaml"]
    candidates += sorted((paths.ray_tune_home / name).glob(f"*/*/{CONFIG_FILE}"))[:1]
    for path in candidates:
        if path.is_file():
            cfg = load_config(path)
            get_spec(cfg.DATA.DATASET)  # a clear error for a bad dataset name
            return RunSettings(name, cfg.DATA.DATASET, int(cfg.DATA.BIN_MS))
    raise FileNotFoundError(
        f"no config for run {name!r}: looked for {candidates[0]} and for trials under "
        f"{paths.ray_tune_home / name}; run `python generate_all_configs.py` and "
        f"`python run_hyperopt.py {name}` first")


def is_smoke_experiment(experiment: str) -> bool:
    """Whether an experiment folder name is a --smoke-test one (`<name>-s<seed>...-smoke`)."""
    return "-smoke" in experiment


def find_snapshots(name: str, *, paths: Paths | None = None,
                   kinds: Iterable[str] = SNAPSHOT_KINDS,
                   experiments: Iterable[str] | None = None) -> list[Snapshot]:
    """Every `ckpts/<trial_id>.<kind>.pth` under `$RAY_TUNE_HOME/<NAME>/`, sorted by path.

    Only the snapshot `kinds` asked for are returned, and with `experiments` only those of
    the experiment folders named. Snapshots of `--smoke-test` experiments (a few epochs
    each) count only when nothing else is left, so a smoke test never slips into a real
    ensemble.
    """
    wanted = None if experiments is None else set(experiments)
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(SNAPSHOT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown snapshot kind(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SNAPSHOT_KINDS)}")
    root = (paths or get_paths()).ray_tune_home / name
    found = []
    for path in sorted(root.rglob("*.pth")) if root.is_dir() else []:
        stem, _, kind = path.stem.rpartition(".")
        rel = path.relative_to(root)
        if kind not in kinds or not stem or path.parent.name != SNAPSHOT_DIR or \
                REFIT_DIR in rel.parts or (wanted is not None and rel.parts[0] not in wanted):
            continue
        found.append(Snapshot(path=path.resolve(), trial_id=stem, val_ckpt=kind,
                              experiment=rel.parts[0] if len(rel.parts) > 3 else "",
                              trial_dir=path.parent.parent.resolve(),
                              mtime_ns=path.stat().st_mtime_ns))
    real = [s for s in found if not is_smoke_experiment(s.experiment)]
    if real and len(real) < len(found):
        log.info("leaving out %d snapshots of smoke-test experiments", len(found) - len(real))
        return real
    return found


def trial_dirs(name: str, *, paths: Paths | None = None) -> list[Path]:
    """Every trial folder (one holding a metrics.csv) under `$RAY_TUNE_HOME/<NAME>/`."""
    root = (paths or get_paths()).ray_tune_home / name
    found = root.rglob(METRICS_FILE) if root.is_dir() else []
    return sorted({p.parent for p in found if REFIT_DIR not in p.relative_to(root).parts})


def trial_hyperparameters(trial_dir: Path) -> dict[str, object]:
    """The searched hyperparameters of a trial (Ray's params.json), flattened to dotted keys."""
    path = Path(trial_dir) / PARAMS_FILE
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


def read_run_info(run_dir: str | Path) -> dict:
    """A run folder's run_info.json ({} when it is missing or unreadable)."""
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_trial_histories(trial_dirs: Iterable[str | Path]) -> list[dict]:
    """Last row of each trial's metrics.csv, with its folder, in trial start order.

    Start order is the modification time of the trial's config.yaml (written once, when
    the trial starts). Trials without a readable metrics.csv are skipped.
    """
    import pandas as pd  # slow to import, and trials (which import this module) never read

    out = []
    for trial_dir in trial_dirs:
        trial_dir = Path(trial_dir)
        metrics = trial_dir / METRICS_FILE
        if not metrics.is_file():
            continue
        try:
            history = pd.read_csv(metrics)
        except (OSError, ValueError, pd.errors.EmptyDataError) as exc:
            log.warning("%s: unreadable (%s); left out of the search plot", metrics, exc)
            continue
        if history.empty:
            continue
        started = trial_dir / CONFIG_FILE
        stamp = (started if started.is_file() else metrics).stat().st_mtime
        out.append({"trial_dir": str(trial_dir), "started": stamp,
                    **history.iloc[-1].to_dict()})
    return sorted(out, key=lambda r: r["started"])


def experiment_records(name: str, *, paths: Paths | None = None) -> list[Mapping]:
    """The experiment_info.json of every experiment of run NAME, in folder order."""
    records = []
    root = (paths or get_paths()).ray_tune_home / name
    for info in sorted(root.glob(f"*/{EXPERIMENT_INFO_FILE}")):
        try:
            records.append(json.loads(info.read_text()))
        except (OSError, ValueError):
            continue
    return records


def search_objective(name: str, *, paths: Paths | None = None) -> str:
    """The objective recorded by run_hyperopt.py for run NAME, else the original's."""
    for record in experiment_records(name, paths=paths):
        if record.get("objective"):
            return str(record["objective"])
    return next(iter(OBJECTIVES))
