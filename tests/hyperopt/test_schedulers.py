"""Trial schedulers: FIFO, and ASHA with the skopt searcher told the stopped trials."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from nlb_ndt.hyperopt.schedulers import asha_grace, build_scheduler

pytest.importorskip("ray")


def test_asha_rungs_sit_at_whole_validations():
    """Verify the first rung: a ninth of training, at least one validation, rounded up to
    a whole number of validations."""
    assert asha_grace(200, 10) == 30  # 200 // 9 = 22 -> 30
    assert asha_grace(4, 2) == 2
    assert asha_grace(10000, 10) == 1120
    assert build_scheduler("fifo", epochs=10, val_interval=2) is None
    assert build_scheduler("asha", epochs=10, val_interval=2) is not None
    with pytest.raises(ValueError, match="fifo, asha"):
        build_scheduler("pbt2", epochs=10, val_interval=2)


@pytest.mark.slow
def test_asha_stops_trailing_trials_and_the_searcher_is_told_them(search_env):
    """Verify a real ASHA search: trials behind at a rung stop there with their snapshots
    kept, the searcher is told every finished or stopped trial, and the experiment resumes
    with one more trial; a FIFO resume of it is refused."""
    run, paths = search_env
    summary = run(samples=5, scheduler="asha", max_concurrent=1, seed=3)  # 4 epochs, rung 2
    epochs = {t["trial_id"]: t["epoch"] for t in summary.trials}
    assert len(epochs) == 5 and max(epochs.values()) == 4
    stopped = [t for t in summary.trials if t["status"] == "stopped"]
    assert stopped and all(t["epoch"] == 2 for t in stopped)
    for trial in summary.trials:
        ckpts = Path(trial["run_dir"]) / "ckpts"
        assert len(list(ckpts.glob("*.pth"))) == 3, trial  # snapshots kept, ranked as usual
    (state_file,) = sorted(summary.experiment_dir.glob("searcher-state-*.pkl"))[-1:]
    state = pickle.loads(state_file.read_bytes())
    assert len(state["yi"]) == 5  # every trial, stopped ones included, was told
    more = run(samples=6, scheduler="asha", max_concurrent=1, seed=3)
    assert len(more.trials) == 6
    with pytest.raises(ValueError, match="scheduled by asha"):
        run(samples=7, scheduler="fifo", max_concurrent=1, seed=3)
