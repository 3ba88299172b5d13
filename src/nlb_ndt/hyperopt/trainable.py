"""The Ray Tune trainable: one trial = one `train_model` run in the trial's own folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ray import tune

from nlb_ndt.atomic import atomic_write
from nlb_ndt.config.defaults import apply_overrides, load_config_text
from nlb_ndt.config.layout import SNAPSHOT_DIR, STATE_FILE, TRIAL_LOG
from nlb_ndt.hyperopt.budget import PAUSED_KEY, wait_to_be_stopped
from nlb_ndt.hyperopt.cluster import trial_run_info
from nlb_ndt.hyperopt.searcher import TRIAL_INDEX_KEY
from nlb_ndt.training.interrupts import BUDGET_SPENT, StopRequest
from nlb_ndt.training.run import train_model

logger = logging.getLogger(__name__)


def trial_dirname(trial) -> str:
    """Trial folder name: `trial_<index>_<ray trial id>` (sorts in suggestion order)."""
    index = trial.config.get(TRIAL_INDEX_KEY, 0)
    return f"trial_{int(index):04d}_{trial.trial_id}"


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return str(value)


def run_trial(config: dict, *, base_cfg: str, experiment_dir: str,
              deadline: float | None = None, shared_states: int = 0) -> None:
    """Ray Tune function trainable: train one model with the suggested hyperparameters.

    The run folder is the trial's own folder under `experiment_dir` (Ray's
    `get_trial_dir()` is a local staging copy in Ray's temp dir, and the worker's working
    directory is moved there too, so neither is used). Metrics go to Tune after every
    validation; a restarted trial continues from its `state.pt`.

    Args:
        config: the suggestion (dotted config keys, "SEED", "TRIAL_INDEX").
        base_cfg: the experiment's resolved config (YAML text).
        experiment_dir: RAY_TUNE_HOME/<name>/<experiment> on shared storage.
        deadline: this session's time-budget deadline (`time.time()`): past it, the trial
            stops at its next validation with its state saved, reports PAUSED_KEY and
            waits for the driver to end the run (nlb_ndt.hyperopt.budget).
        shared_states: population-based training when > 0: every report carries the
            trial's state as a Tune checkpoint (the last `shared_states` of them are kept),
            and a trial told to continue another's (an exploit) starts from that state with
            its own, perturbed, hyperparameters.
    """
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = Path(experiment_dir) / Path(ctx.get_trial_dir()).name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(config, base_cfg)

    reported = []

    def report(metrics: dict) -> None:
        # Ray reads a "done" key as "stop this trial now"; train_model still has files to
        # write after its last report, so it travels as "finished".
        out = {k: _plain(v) for k, v in metrics.items() if k != "done"}
        out["finished"] = bool(metrics.get("done", False))
        out["seed"] = int(cfg.SEED)
        reported.append(out)
        if shared_states and (run_dir / STATE_FILE).is_file():
            with shared_state(run_dir, trial_id) as checkpoint:
                tune.report(out, checkpoint=checkpoint)
            prune_shared_states(run_dir, keep=shared_states)
        else:
            tune.report(out)

    with _trial_log(run_dir / TRIAL_LOG):
        try:
            logger.info("trial %s (seed %d, process %d) in %s", trial_id, cfg.SEED,
                        os.getpid(), run_dir)
            if shared_states:
                take_shared_state(run_dir, trial_id)
            final = train_model(cfg, run_dir=run_dir, trial_id=trial_id, report=report,
                                stop=StopRequest(deadline=deadline),
                                run_info=trial_run_info(run_dir))
            if final.get("stopped") == BUDGET_SPENT:
                report({**final, PAUSED_KEY: True})
                wait_to_be_stopped(trial_id)
            elif not reported:  # a finished run resumed: its results still reach Tune
                report(final)
        except Exception:
            logger.exception("trial %s failed", trial_id)
            raise


def trial_config(config: dict, base_cfg: str):
    """The frozen config of a trial: the experiment's with the suggestion merged in."""
    overrides = {k: v for k, v in config.items() if k != TRIAL_INDEX_KEY}
    # Snapshots go into the trial's own folder (the rendered config's CHECKPOINT_DIR is
    # for single runs), as the original's trainable did; relative to run_dir.
    overrides["CHECKPOINT_DIR"] = f"{SNAPSHOT_DIR}/"
    cfg = apply_overrides(load_config_text(base_cfg), overrides)
    cfg.freeze()
    return cfg


@contextlib.contextmanager
def _trial_log(path: Path) -> Iterator[None]:
    """The library's log in the trial folder while a trial runs (Ray workers have no
    logging set up); removed afterwards, so a reused worker logs each trial apart."""
    pkg_logger = logging.getLogger("nlb_ndt")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = pkg_logger.level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        handler.close()


#: What a shared state checkpoint holds besides state.pt: whose state it is.
ORIGIN_FILE = "origin.json"


@contextlib.contextmanager
def shared_state(run_dir: Path, trial_id: str) -> Iterator[tune.Checkpoint]:
    """A Tune checkpoint of the trial's state.pt (Tune copies it into the trial's folder as
    checkpoint_<n>/, pruned by `prune_shared_states`); the staging copy is removed
    afterwards."""
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".share-") as tmp:
        shutil.copy2(run_dir / STATE_FILE, Path(tmp) / STATE_FILE)
        (Path(tmp) / ORIGIN_FILE).write_text(json.dumps({"trial_id": trial_id}))
        yield tune.Checkpoint.from_directory(tmp)


def prune_shared_states(run_dir: Path, *, keep: int) -> None:
    """Remove all but the trial's `keep` newest shared states (checkpoint_<n>/).

    The trial prunes them itself (Tune keeps every one): Tune registers a state PBT clones
    twice, and its own pruning then deletes that folder twice and logs the second as an
    error."""
    folders = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    for old in folders[:-keep]:  # keep=0 removes none ([:-0] is empty)
        shutil.rmtree(old, ignore_errors=True)


def take_shared_state(run_dir: Path, trial_id: str) -> None:
    """Start from the checkpoint Tune hands this trial when it is another trial's (a PBT
    exploit), replacing this trial's state.pt; the trial's own checkpoints are older than
    its state.pt, so those are left alone."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return
    with checkpoint.as_directory() as folder:
        origin = json.loads((Path(folder) / ORIGIN_FILE).read_text()).get("trial_id")
        if origin == trial_id and (run_dir / STATE_FILE).is_file():
            return
        with atomic_write(run_dir / STATE_FILE) as tmp:
            shutil.copyfile(Path(folder) / STATE_FILE, tmp)
    logger.info("population-based training: trial %s continues from trial %s's state",
                trial_id, origin)
