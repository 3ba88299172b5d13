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


def test_pbt_explore_perturbs_within_bounds_by_the_weights():
    """Verify AutoLFADS's perturbation: each searched value moves by a factor in
    [1 - w, 1 - 0.002 w] or [1 + 0.002 w, 1 + w] and stays inside its bounds."""
    from nlb_ndt.config.defaults import load_config
    from nlb_ndt.config.search_space import parse_search_space
    from nlb_ndt.hyperopt.schedulers import PbtExplore

    dims = parse_search_space({"LFADS.LR_INIT": {"low": 1e-5, "high": 5e-3,
                                                 "sample_fn": "loguniform"},
                               "LFADS.DROPOUT_RATE": {"low": 0.0, "high": 0.6}},
                              load_config(freeze=False))
    explore = PbtExplore({"LFADS.LR_INIT": 0.3, "LFADS.DROPOUT_RATE": 0.3}, dims, seed=1)
    for _ in range(200):
        new = explore({"LFADS.LR_INIT": 1e-3, "LFADS.DROPOUT_RATE": 0.3, "SEED": 4})
        ratio = new["LFADS.LR_INIT"] / 1e-3
        assert 0.7 - 1e-12 <= ratio <= 1.3 + 1e-12 and abs(ratio - 1) >= 0.0006 - 1e-12
        assert 0.0 <= new["LFADS.DROPOUT_RATE"] <= 0.6 and new["SEED"] == 4
    edge = explore({"LFADS.LR_INIT": 5e-3, "LFADS.DROPOUT_RATE": 0.6})
    assert edge["LFADS.LR_INIT"] <= 5e-3 and edge["LFADS.DROPOUT_RATE"] <= 0.6


def test_pbt_keeps_the_state_a_clone_can_still_ask_for():
    """Verify the shared states a PBT trial keeps: PBT may clone the state a top trial had
    at its last perturbation up to an interval later, and Tune registers that state twice,
    so at least two intervals' reports (and never fewer than Tune's minimum) are kept. With
    five, the AutoLFADS schedule (interval 25, a report every 5 epochs) lost cloned states."""
    from nlb_ndt.config.render import load_profile
    from nlb_ndt.hyperopt.schedulers import pbt_checkpoints_kept, pbt_schedule

    pbt = load_profile("autolfads").pbt
    assert pbt_schedule(pbt, epochs=1000, val_interval=5) == (25, 105)
    assert pbt_schedule(pbt, epochs=8, val_interval=2) == (2, 2)  # a smoke run still perturbs
    assert pbt_checkpoints_kept(25, 5) >= 2 * 5 + 1 > 5
    for interval in (1, 2, 7, 25, 60):
        for val_interval in (1, 2, 5, 10):
            reports = -(-interval // val_interval)
            assert pbt_checkpoints_kept(interval, val_interval) >= max(5, 2 * reports + 1)


@pytest.mark.slow
def test_autolfads_pbt_search_shares_states_and_resumes(search_env, tmp_path):
    """Verify `--profile autolfads` (LFADS under population-based training): trials report
    their state as checkpoints, a trial in the bottom half continues from a top trial's
    state with perturbed values, only LFADS keys are searched, each trial has its seed, and
    the experiment resumes and submits through the unchanged stage."""
    from nlb_ndt.checkpoint import load_model
    from nlb_ndt.model.lfads import LFADS
    from nlb_ndt.stages.make_submission import make_submission

    run, paths = search_env
    opts = ["TRAIN.NUM_UPDATES", "8", "TRAIN.VAL_INTERVAL", "2",
            "TRAIN.CHECKPOINT_INTERVAL", "2", "LFADS.GEN_DIM", "16", "LFADS.IC_DIM", "8",
            "LFADS.IC_ENC_DIM", "8", "LFADS.CI_ENC_DIM", "4", "LFADS.CON_DIM", "4",
            "LFADS.FAC_DIM", "6", "USE_TENSORBOARD", "False"]
    summary = run(samples=4, profile="autolfads", gpus_per_trial=0, seed=5, smoke_test=False,
                  opts=opts)
    info = summary.experiment_dir / "experiment_info.json"
    import json

    recorded = json.loads(info.read_text())
    assert recorded["scheduler"] == "pbt" and recorded["profile"] == "autolfads"
    assert all(key.startswith("LFADS.") for key in recorded["search_space"])
    logs = [(Path(t["run_dir"]) / "trial.log").read_text() for t in summary.trials]
    assert any("continues from trial" in log for log in logs)  # an exploit happened
    assert not [t for t in summary.trials if t["status"] == "error"]
    assert any(Path(t["run_dir"]).glob("checkpoint_*") for t in summary.trials)
    model, _ = load_model(next(Path(summary.trials[0]["run_dir"]).glob("ckpts/*.lve.pth")))
    assert isinstance(model, LFADS)
    again = run(samples=4, profile="autolfads", gpus_per_trial=0, seed=5, smoke_test=False,
                opts=opts)
    assert again.experiment_dir == summary.experiment_dir and len(again.trials) == 4
    # A trial that continues another's state takes that trial's config, seed included.
    assert {t["seed"] for t in again.trials} <= {5, 6, 7, 8}
    result = make_submission(["synthetic"], phase="val", paths=paths,
                             experiments=[summary.experiment_dir.name],
                             out=tmp_path / "pbt-val.h5")
    assert {m["family"] for m in result.ensembles["synthetic"]["members"]} == {"lfads"}
