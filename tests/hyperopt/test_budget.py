"""The time budget of a search: stop starting trials, pause running ones at a validation
with their state saved, and continue them when run again with a larger budget."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from nlb_ndt.hyperopt.budget import past, session_deadline, spent_seconds

pytest.importorskip("ray")

#: Long trials of a one-layer model: a budget of seconds ends them long before the end.
LONG = ["MODEL.NUM_LAYERS", "1", "MODEL.HIDDEN_SIZE", "16", "TRAIN.NUM_UPDATES", "5000",
        "TRAIN.VAL_INTERVAL", "2", "TRAIN.CHECKPOINT_INTERVAL", "1000",
        "USE_TENSORBOARD", "False"]


def test_deadline_takes_off_what_earlier_sessions_spent(tmp_path):
    """Verify the budget arithmetic: hours minus the seconds recorded by earlier sessions."""
    info = tmp_path / "experiment_info.json"
    assert session_deadline(info, None, started=100.0) is None
    assert session_deadline(info, 1.0, started=100.0) == 3700.0
    info.write_text(json.dumps({"sessions": [{"seconds": 600}, {"seconds": 300.5}, {}]}))
    assert spent_seconds(json.loads(info.read_text())) == 900.5
    assert session_deadline(info, 1.0, started=100.0) == 2799.5
    assert past(time.time() - 1) and not past(None) and not past(time.time() + 60)


def _resumed_epoch(trial_dir: Path) -> int | None:
    found = re.findall(r"resumed .* at epoch (\d+)", (trial_dir / "trial.log").read_text())
    return int(found[-1]) if found else None


@pytest.mark.slow
def test_time_budget_pauses_a_search_and_a_larger_budget_continues_it(search_env):
    """Verify that a search past its budget starts no more trials, that its running trial
    pauses at a validation with its state saved (not finished), and that running it again
    with a larger budget continues that same trial from its state."""
    import torch

    run, paths = search_env
    budget = 15 / 3600  # hours: the trial starts, trains a few epochs, then pauses
    first = run(samples=3, smoke_test=False, opts=LONG, max_concurrent=1, time_budget=budget)
    assert len(first.trials) == 1 and first.trials[0]["status"] == "stopped"
    trial_dir = Path(first.trials[0]["run_dir"])
    state = torch.load(trial_dir / "state.pt", weights_only=True)
    paused_at = int(state["epoch"])
    assert paused_at % 2 == 0 and paused_at > 0  # at a validation
    rows = (trial_dir / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[0] == str(paused_at) and "False" in rows[-1]
    info = json.loads((first.experiment_dir / "experiment_info.json").read_text())
    assert info["time_budget_hours"] == budget and info["sessions"][-1]["seconds"] > 0

    spent = info["sessions"][-1]["seconds"]
    second = run(samples=3, smoke_test=False, opts=LONG, max_concurrent=1,
                 time_budget=(spent + 12) / 3600)  # 12 s more than the first session took
    again = [t for t in second.trials if t["trial_id"] == first.trials[0]["trial_id"]]
    assert len(again) == 1 and _resumed_epoch(trial_dir) == paused_at
    assert int(torch.load(trial_dir / "state.pt", weights_only=True)["epoch"]) > paused_at
