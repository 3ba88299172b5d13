"""One experiment of a search: its name, folder, record, resources and summary, and the
complete copies of Tune's state kept in its folder (`StateBackup`, `repair_state`).

An experiment is RAY_TUNE_HOME/<name>/<name>-s<seed>[-<profile>][-cobps][-smoke][-<n>]:
the seed, a profile, a non-default objective and a smoke test each make a different
experiment, and `--fresh` starts the next -<n> of the series. Its experiment_info.json
records the settings and every session (host, argv, versions) that ran it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import pickletools
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ray
from ray import tune

from nlb_ndt.atomic import atomic_write, write_text_atomic
from nlb_ndt.config.defaults import load_config_text
from nlb_ndt.config.layout import (
    BASE_CONFIG_FILE,
    EXPERIMENT_INFO_FILE,
    SEARCH_SPACE_FILE,
    TRIALS_FILE,
)
from nlb_ndt.config.search_space import Dimension, to_json
from nlb_ndt.hyperopt.cluster import trial_columns
from nlb_ndt.hyperopt.searcher import ACQ_FUNC, N_INITIAL_POINTS, TRIAL_INDEX_KEY, _finite
from nlb_ndt.runtime import library_versions

logger = logging.getLogger(__name__)

#: `--smoke-test`: a few epochs, so a real search finishes in seconds (CI).
SMOKE_OVERRIDES = {
    "TRAIN.NUM_UPDATES": 4, "TRAIN.VAL_INTERVAL": 2, "TRAIN.PATIENCE": 1000,
    "TRAIN.LOG_INTERVAL": 2, "TRAIN.CHECKPOINT_INTERVAL": 2,
    "TRAIN.MASK_SPAN_RAMP_START": 1, "TRAIN.MASK_SPAN_RAMP_END": 3,
}
SMOKE_SAMPLES = 2
DEFAULT_SAMPLES = 100


def experiment_base(name: str, seed: int, *, objective: str, smoke_test: bool,
                    profile: str | None = None) -> str:
    """The series name of an experiment: `<name>-s<seed>[-<profile>][-cobps][-smoke]`."""
    return (f"{name}-s{seed}" + (f"-{profile}" if profile else "")
            + ("" if objective == "best_masked_loss" else "-cobps")
            + ("-smoke" if smoke_test else ""))


def experiment_series(storage: Path, base: str) -> list[Path]:
    """Existing experiments `base`, `base-2`, `base-3`, ... under `storage`, in order."""
    found = []
    if (storage / base).is_dir():
        found.append((1, storage / base))
    for path in storage.glob(f"{base}-*"):
        suffix = path.name[len(base) + 1:]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def choose_experiment(storage: Path, base: str, *, fresh: bool) -> Path:
    """The newest experiment of the series (to continue), or a new one with `fresh`."""
    series = experiment_series(storage, base)
    if not series:
        return storage / base
    if not fresh:
        return series[-1]
    last = series[-1].name
    n = int(last.rsplit("-", 1)[1]) if last != base else 1
    return storage / f"{base}-{n + 1}"


def restorable(exp_dir: Path) -> bool:
    """Whether Ray can continue the experiment in `exp_dir`."""
    return (tune.Tuner.can_restore(str(exp_dir))
            and any(exp_dir.glob("experiment_state-*.json")))


#: Tune's own records of an experiment (trials, searcher), rewritten as the search runs.
TUNE_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json",
                    "basic-variant-state-*.json", "searcher-state-*.pkl")
#: Where the last complete copy of each of them is kept (see `StateBackup`).
STATE_BACKUP_DIR = ".tune_state_backup"


def _state_files(exp_dir: Path) -> list[Path]:
    """The experiment's Tune state files (TUNE_STATE_FILES), in a stable order."""
    return sorted(path for pattern in TUNE_STATE_FILES for path in exp_dir.glob(pattern))


def _whole(path: Path) -> bytes | None:
    """A Tune state file's bytes if it is whole, else None: a pickle (some are named .json)
    whose opcodes run to the final STOP, read with pickletools, which executes nothing, or
    JSON that parses."""
    try:
        data = path.read_bytes()
        if data[:1] == b"\x80":  # the PROTO opcode that starts every pickle Tune writes
            ops = list(pickletools.genops(data))
            return data if ops[-1][0].name == "STOP" else None
        json.loads(data)
        return data
    except Exception:  # noqa: BLE001 - whatever stops the reading, the file is not whole
        return None


class StateBackup(tune.Callback):
    """Keeps a complete copy of each Tune state file of `exp_dir` in STATE_BACKUP_DIR.

    Tune writes its state into a staging folder and copies it into the experiment folder
    in the background, file by file and not atomically, so a driver killed during a copy
    (SIGKILL, a power cut) leaves a cut file there, and a restore from it silently loses
    every trial. After each step of Tune's loop, each state file that changed and reads
    whole is copied (atomically) into the backup; `repair_state` puts it back.
    """

    def __init__(self, exp_dir: Path, min_interval_s: float = 1.0):
        self.exp_dir = Path(exp_dir)
        self.min_interval_s = min_interval_s
        self._interval = min_interval_s
        self._last = 0.0
        self._copied: dict[str, tuple[int, int]] = {}

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= self._interval:
            self.copy_complete()
            # A big search's state takes longer to check: at most 5 % of the driver's time.
            self._interval = max(self.min_interval_s, 20 * (time.monotonic() - self._last))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.copy_complete()  # Tune has just saved its final state and waited for it

    def copy_complete(self) -> None:
        """Copy each state file that changed since its last copy and reads whole."""
        self._last = time.monotonic()
        for path in _state_files(self.exp_dir):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if self._copied.get(path.name) == stamp:
                    continue
                data = _whole(path)  # read once: Tune may be rewriting it
                if data is None:
                    continue
                with atomic_write(self.exp_dir / STATE_BACKUP_DIR / path.name) as tmp:
                    tmp.write_bytes(data)
                self._copied[path.name] = stamp


def repair_state(exp_dir: Path) -> list[str]:
    """Put back the last complete copy of each Tune state file that an interruption cut;
    returns the names repaired (a cut file without a copy is left, with a warning)."""
    repaired = []
    for path in _state_files(exp_dir):
        if _whole(path) is not None:
            continue
        data = _whole(exp_dir / STATE_BACKUP_DIR / path.name)
        if data is None:
            logger.warning("%s is incomplete (the last run was cut while writing it) "
                           "and has no complete copy; Tune may not know the trials "
                           "it recorded", path)
            continue
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
        repaired.append(path.name)
    if repaired:
        logger.warning("%s: the last run was cut while Tune saved its state; continuing "
                       "from the last complete copy of %s", exp_dir, ", ".join(repaired))
    return repaired


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def check_same_experiment(exp_dir: Path, cfg_text: str, dims: Mapping[str, Dimension],
                          objective: str, scheduler: str = "fifo") -> None:
    """A continued experiment must keep its config, search space, objective and trial
    scheduler (experiments made before --scheduler existed are FIFO)."""
    problems = []
    saved_cfg = exp_dir / BASE_CONFIG_FILE
    # Compared as resolved configs, not as text: an experiment made by an earlier version
    # lacks keys added since (their defaults apply) and may carry keys removed since.
    if saved_cfg.exists() and (load_config_text(saved_cfg.read_text(), source=str(saved_cfg))
                               .dump() != load_config_text(cfg_text).dump()):
        problems.append(f"the config differs from {saved_cfg}")
    saved_space = exp_dir / SEARCH_SPACE_FILE
    if saved_space.exists() and json.loads(saved_space.read_text()) != to_json(dims):
        problems.append(f"the search space differs from {saved_space}")
    info_path = exp_dir / EXPERIMENT_INFO_FILE
    if info_path.exists():
        saved = json.loads(info_path.read_text())
        if saved.get("objective") and saved["objective"] != objective:
            problems.append(f"it optimises {saved['objective']}, not {objective}")
        if saved.get("scheduler", "fifo") != scheduler:
            problems.append(f"its trials are scheduled by {saved.get('scheduler', 'fifo')}, "
                            f"not {scheduler}")
    if problems:
        raise ValueError(f"cannot continue {exp_dir}: {'; '.join(problems)}. Start a new "
                         f"experiment next to it with --fresh, or undo the change")


def write_record(exp_dir: Path, *, resume: bool, cfg_text: str, dims: Mapping[str, Dimension],
                 settings: Mapping[str, Any]) -> Path:
    """Update experiment_info.json with `settings` and this session; on a new experiment
    also write base_config.yaml and search_space.json. Returns the info file."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    info_path = exp_dir / EXPERIMENT_INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    sessions = info.get("sessions", [])
    sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "host": socket.gethostname(), "samples": settings.get("samples"),
                     "argv": sys.argv, "versions": library_versions()})
    info.update({
        **settings, "experiment": exp_dir.name, "trial_seeds": "seed + trial index",
        "searcher": {"library": "scikit-optimize", "base_estimator": "GP",
                     "acq_func": ACQ_FUNC, "n_initial_points": N_INITIAL_POINTS,
                     "random_state": settings.get("seed"),
                     "pending_trials": "constant liar (cl_min)"},
        "search_space": to_json(dims), "versions": library_versions(), "sessions": sessions,
    })
    _write_json(info_path, info)
    if not resume:
        write_text_atomic(exp_dir / BASE_CONFIG_FILE, cfg_text)
        _write_json(exp_dir / SEARCH_SPACE_FILE, to_json(dims))
    return info_path


def close_session(info_path: Path, *, seconds: float) -> None:
    """Record the wall time of this session (the last in experiment_info.json), which the
    time budget of later sessions takes off."""
    info = json.loads(info_path.read_text())
    if info.get("sessions"):
        info["sessions"][-1]["seconds"] = round(float(seconds), 1)
        _write_json(info_path, info)


def plan_resources(cpus_per_trial: float, gpus_per_trial: float,
                    max_concurrent: int | None) -> tuple[float, float, int]:
    """Fit the per-trial request to the cluster so that trials can start at all."""
    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if gpus_per_trial > 0 and gpus == 0:
        logger.warning("no GPU in the Ray cluster: trials run on CPUs "
                       "(gpus per trial %g -> 0)", gpus_per_trial)
        gpus_per_trial = 0.0
    if cpus and cpus_per_trial > cpus:
        logger.warning("the cluster has %g CPUs: cpus per trial %g -> %g", cpus,
                       cpus_per_trial, cpus)
        cpus_per_trial = cpus
    if max_concurrent is None:
        fits = [cpus // cpus_per_trial] if cpus_per_trial > 0 and cpus else []
        if gpus_per_trial > 0:
            fits.append(math.floor(gpus / gpus_per_trial + 1e-9))
        max_concurrent = int(max(1, min(fits))) if fits else 1
    return cpus_per_trial, gpus_per_trial, int(max_concurrent)


@dataclass
class SearchSummary:
    """What a search left behind.

    Attributes:
        experiment_dir: RAY_TUNE_HOME/<name>/<experiment>.
        objective, mode: the metric the searcher optimised and its direction.
        trials: one dict per trial: trial_id, status ("done", "stopped" or "error"),
            the objective's value, seed, run_dir and the searched hyperparameters.
    """

    experiment_dir: Path
    objective: str
    mode: str
    trials: list[dict] = field(default_factory=list)

    def best(self) -> dict | None:
        """The trial with the best finite objective (None if there is none)."""
        scored = [t for t in self.trials if _finite(t.get(self.objective)) is not None]
        if not scored:
            return None
        sign = 1 if self.mode == "min" else -1
        return min(scored, key=lambda t: sign * t[self.objective])

    def format_report(self, top: int = 10) -> str:
        """A plain-text table of the `top` trials by objective, plus what needs doing."""
        key, sign = self.objective, 1 if self.mode == "min" else -1
        scored = sorted((t for t in self.trials if _finite(t.get(key)) is not None),
                        key=lambda t: sign * t[key])
        lines = [f"{self.experiment_dir}: {len(self.trials)} trials; best {top} by {key}:",
                 f"{'trial':<10} {'status':<8} {key:>18} {'best_val_cobps':>15} {'seed':>6}"]
        for t in scored[:top]:
            cobps = _finite(t.get("best_val_cobps"))
            lines.append(f"{t['trial_id']:<10} {t['status']:<8} {t[key]:>18.5f} "
                         f"{cobps if cobps is not None else math.nan:>15.4f} {t['seed']:>6}")
        failed = sum(t["status"] == "error" for t in self.trials)
        stopped = sum(t["status"] == "stopped" for t in self.trials)
        if failed:
            lines.append(f"{failed} trial(s) failed: see error.txt and trial.log in their "
                         f"folders")
        if stopped:
            lines.append(f"{stopped} trial(s) unfinished: run the same command again to "
                         f"continue")
        return "\n".join(lines)


def summarise(results, exp_dir: Path, objective: str, mode: str,
               dims: Mapping[str, Dimension]) -> SearchSummary:
    summary = SearchSummary(exp_dir, objective, mode)
    for result in results:
        metrics = result.metrics or {}
        config = result.config or metrics.get("config", {}) or {}
        status = ("error" if result.error else
                  "done" if metrics.get("finished") else "stopped")
        # Errored trials may have reported nothing: the id ends the folder name.
        trial_id = metrics.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1]
        row = {"trial_id": trial_id,
               "status": status, objective: metrics.get(objective),
               "best_val_cobps": metrics.get("best_val_cobps"),
               "epoch": metrics.get("epoch"), "seed": config.get("SEED"),
               "trial_index": config.get(TRIAL_INDEX_KEY),
               "run_dir": str(exp_dir / Path(result.path).name)}
        row.update({key: config.get(key) for key in dims})
        row.update(trial_columns(row["run_dir"]))  # host, node_id, device, attempts
        summary.trials.append(row)
    summary.trials.sort(key=lambda t: (t["trial_index"] is None, t["trial_index"]))
    return summary


def write_trials_csv(summary: SearchSummary) -> None:
    if not summary.trials:
        return
    with atomic_write(summary.experiment_dir / TRIALS_FILE) as tmp, \
            open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary.trials[0]))
        writer.writeheader()
        writer.writerows(summary.trials)
