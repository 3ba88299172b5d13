"""A search's time budget (`run_hyperopt.py --time-budget HOURS`).

The budget is the experiment's, summed over the sessions that ran it: each session records
its wall time in experiment_info.json, and a new session gets what is left. When the
session's deadline passes:

1. no new trial starts (`SampleBudget` suggests nothing more);
2. each running trial goes on to its next validation, saves its state there and reports
   `PAUSED_KEY` (the trainable then waits to be stopped);
3. once every running trial has paused, `BudgetCallback` ends the Tune run the way Ctrl-C
   does (SIGUSR1, which Tune handles by saving the experiment with those trials still
   running), so re-running with a larger budget restores them and they continue.

A session killed outright (SIGKILL, power cut) records no time: its hours are not counted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from nlb_ndt.hyperopt.ray_compat import stop_tune_run

logger = logging.getLogger(__name__)

#: A trial's report that it stopped for the budget with its state saved.
PAUSED_KEY = "budget_paused"
#: Seconds a paused trial waits for the driver to end the run before it returns anyway.
PAUSE_WAIT_S = float(os.environ.get("NLB_BUDGET_PAUSE_WAIT_S", "600"))


def spent_seconds(info: dict) -> float:
    """Wall seconds the experiment's earlier sessions recorded."""
    return float(sum(float(s.get("seconds") or 0.0) for s in info.get("sessions", [])))


def session_deadline(info_file: Path, hours: float | None, *, started: float) -> float | None:
    """The `time.time()` at which this session's share of the budget is spent (None: no
    budget). What earlier sessions spent is taken off."""
    if hours is None:
        return None
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return started + hours * 3600.0 - spent_seconds(info)


def read_deadline(info_file: str | Path) -> float | None:
    """The deadline this session wrote into experiment_info.json (None: no budget)."""
    try:
        value = json.loads(Path(info_file).read_text()).get("deadline")
    except (OSError, ValueError):
        return None
    return None if value is None else float(value)


def past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def wait_to_be_stopped(trial_id: str) -> None:
    """What a paused trial does: wait for the driver to end the run (it keeps the trial
    "running" in the experiment, so it resumes), but not forever."""
    logger.info("trial %s paused for the time budget; waiting for the search to stop",
                trial_id)
    time.sleep(PAUSE_WAIT_S)
    logger.warning("trial %s: the search did not stop within %.0f s of the budget; ending "
                   "the trial (its snapshots are kept)", trial_id, PAUSE_WAIT_S)


class BudgetCallback(tune.Callback):
    """Ends the Tune run, resumably, once the deadline has passed and every running trial
    has paused at a validation with its state saved.

    Not pickled into the experiment: each session attaches its own (ray_compat).
    """

    def __init__(self, deadline: float | None):
        self.deadline = deadline
        self._paused: set[str] = set()
        self._stopping = False

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict,
                        **info: Any) -> None:
        if result.get(PAUSED_KEY):
            self._paused.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._paused.discard(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._stopping or not past(self.deadline):
            return
        running = [t.trial_id for t in trials if t.status == "RUNNING"]
        if all(trial_id in self._paused for trial_id in running):
            self._stopping = True
            logger.warning("the time budget is spent: stopping the search with %d trial(s) "
                           "paused at a validation; run it again with a larger "
                           "--time-budget to continue", len(running))
            if not stop_tune_run():
                logger.warning("Tune is not running in the main thread: the paused trials "
                               "end on their own after %.0f s", PAUSE_WAIT_S)
