"""The Ray Tune search: real searches on the synthetic dataset (trainable, resume, profiles,
experiments made by earlier versions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, run_smoke_search

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.search_space import load_search_space

hyperopt = pytest.importorskip("nlb_ndt.hyperopt")
SkoptSearcher = hyperopt.SkoptSearcher

METRIC = "best_masked_loss"


# ------------------------------------------------------------------ real Ray searches
def _trial_files(run_dir: Path, trial_id: str) -> list[Path]:
    return [run_dir / "config.yaml", run_dir / "run_info.json", run_dir / "metrics.csv"] + [
        run_dir / "ckpts" / f"{trial_id}.{kind}.pth" for kind in ("lve", "lfve", "cobps")]


@pytest.mark.slow
def test_run_search_smoke_on_cpu(ray_env, caplog):
    """Verify a real 2-trial search on CPU: GPU requests fall back to CPU, every trial
    folder is a complete run folder with its own seed, and the experiment records its
    settings and library versions."""
    paths, temp_dir = ray_env
    summary = run_smoke_search(paths, temp_dir, samples=2, gpus_per_trial=0.5)
    assert any("no GPU" in r.message for r in caplog.records)
    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0-smoke"
    assert summary.experiment_dir == exp_dir
    assert len(summary.trials) == 2
    assert {t["status"] for t in summary.trials} == {"done"}
    assert sorted(t["seed"] for t in summary.trials) == [0, 1]
    for trial in summary.trials:
        run_dir = Path(trial["run_dir"])
        assert run_dir.parent == exp_dir and trial["trial_id"] in run_dir.name
        for path in _trial_files(run_dir, trial["trial_id"]):
            assert path.is_file(), path
        cfg = load_config(run_dir / "config.yaml")
        assert cfg.SEED == trial["seed"] and cfg.TRAIN.NUM_UPDATES == 4
        assert cfg.TRAIN.MASK_RATIO == trial["TRAIN.MASK_RATIO"]
        run_info = json.loads((run_dir / "run_info.json").read_text())
        assert run_info["trial_id"] == trial["trial_id"]
    info = json.loads((exp_dir / "experiment_info.json").read_text())
    assert info["objective"] == "best_masked_loss" and info["samples"] == 2
    assert info["resources_per_trial"] == {"cpu": 1, "gpu": 0.0}
    assert {"ray", "scikit-optimize", "torch"} <= set(info["versions"])
    assert info["searcher"]["n_initial_points"] == 10
    assert (exp_dir / "trials.csv").is_file() and (exp_dir / "base_config.yaml").is_file()
    assert summary.best() is not None


@pytest.mark.slow
def test_run_search_resumes_until_samples(ray_env):
    """Verify that a search run again continues its experiment: it ends with exactly
    --samples trials, the finished trial is not retrained, and the restored searcher
    continues its random stream instead of restarting it. Tune's state files are cut to
    nothing first (a driver killed while Tune copied them): the complete copies kept
    beside them are put back, so nothing is lost."""
    from nlb_ndt.hyperopt.experiment import STATE_BACKUP_DIR

    paths, temp_dir = ray_env
    first = run_smoke_search(paths, temp_dir, samples=1, seed=7)
    assert len(first.trials) == 1
    done = first.trials[0]
    files = _trial_files(Path(done["run_dir"]), done["trial_id"])
    stamps = {p: p.stat().st_mtime_ns for p in files}
    metrics = files[2].read_text()
    states = [p for p in first.experiment_dir.glob("*state-*") if p.is_file()]
    assert {p.name.split("-")[0] for p in states} >= {"experiment_state", "searcher"}
    for path in states:
        assert (path.parent / STATE_BACKUP_DIR / path.name).read_bytes() == path.read_bytes()
        path.write_bytes(b"")

    second = run_smoke_search(paths, temp_dir, samples=2, seed=7)
    assert len(second.trials) == 2
    assert second.experiment_dir == first.experiment_dir
    kept = [t for t in second.trials if t["trial_id"] == done["trial_id"]]
    assert len(kept) == 1 and kept[0]["status"] == "done"
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert files[2].read_text() == metrics
    new = next(t for t in second.trials if t["trial_id"] != done["trial_id"])
    assert new["seed"] == 8 and new["trial_index"] == 1
    # The searcher's second random draw, not a repeat of its first.
    dims = load_search_space(paths.config_dir / "synthetic.json")
    fresh = SkoptSearcher(dims, metric=METRIC, mode="min", seed=7)
    expected = [fresh.suggest("a"), fresh.suggest("b")]
    assert {k: new[k] for k in dims} == {k: expected[1][k] for k in dims}
    assert {k: done[k] for k in dims} == {k: expected[0][k] for k in dims}
    info = json.loads((first.experiment_dir / "experiment_info.json").read_text())
    assert [s["samples"] for s in info["sessions"]] == [1, 2]
    assert sorted(os.listdir(paths.ray_tune_home / "synthetic")) == ["synthetic-s7-smoke"]


@pytest.mark.slow
def test_run_search_bin_ms_is_its_own_run_end_to_end(ray_env):
    """Verify --bin-ms: the synthetic config (20 ms) searched at 5 ms becomes run
    `synthetic_5`, its trials train on 5 ms bins, and make_submission ranks that run and
    writes the 5 ms group (mc_maze_small, not mc_maze_small_20)."""
    import h5py

    from nlb_ndt.datasets import get_spec
    from nlb_ndt.stages.make_submission import make_submission

    paths, temp_dir = ray_env
    summary = run_smoke_search(paths, temp_dir, samples=1, bin_ms=5)
    assert summary.experiment_dir == paths.ray_tune_home / "synthetic_5" / "synthetic_5-s0-smoke"
    cfg = load_config(Path(summary.trials[0]["run_dir"]) / "config.yaml")
    assert cfg.DATA.BIN_MS == 5
    assert not (paths.ray_tune_home / "synthetic").exists()
    with pytest.raises(ValueError, match="10"):
        run_smoke_search(paths, temp_dir, samples=1, bin_ms=10)

    result = make_submission(["synthetic_5"], phase="val", ensemble_size=1, paths=paths)
    spec = get_spec("mc_maze_small")
    with h5py.File(result.path, "r") as f:
        assert list(f) == ["mc_maze_small"]
        t_obs, _ = spec.bins(5)
        assert f["mc_maze_small/eval_rates_heldout"].shape[1] == t_obs
    assert result.scores and result.scores[0]["co-bps"] is not None


@pytest.mark.slow
def test_run_search_profile_aesmte3_sets_the_originals_settings(ray_env):
    """Verify that --profile aesmte3 trains with the original's settings (fp32, its AdamW,
    its lfve loss) in its own experiment, records the profile and the snapshot kinds, and
    that make_submission then ranks lve and lfve only."""
    from nlb_ndt.stages.make_submission import default_snapshot_kinds

    paths, temp_dir = ray_env
    summary = run_smoke_search(paths, temp_dir, samples=1, profile="aesmte3", gpus_per_trial=0)
    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0-aesmte3-smoke"
    assert summary.experiment_dir == exp_dir
    info = json.loads((exp_dir / "experiment_info.json").read_text())
    assert info["profile"] == "aesmte3" and info["snapshots"] == ["lve", "lfve"]
    assert info["objective"] == "best_masked_loss"
    (trial,) = summary.trials
    cfg = load_config(Path(trial["run_dir"]) / "config.yaml")
    assert cfg.TRAIN.AMP is False and cfg.TRAIN.OPTIMIZER == "adamw_legacy"
    assert cfg.TRAIN.LFVE_LEGACY is True
    run_info = json.loads((Path(trial["run_dir"]) / "run_info.json").read_text())
    assert run_info["precision"] == "fp32" and run_info["optimizer"] == "adamw_legacy"
    assert default_snapshot_kinds("synthetic", paths=paths) == ("lve", "lfve")


FIXTURE_EXPERIMENT = ROOT / "tests" / "fixtures" / "experiment_v0_1"
#: Where the fixture was made (`NLB_HOME`): its text files name paths under it.
FIXTURE_HOME = "/tmp/NLB_FIXTURE_HOME"
FIXTURE_OPTS = ["MODEL.NUM_LAYERS", "1", "USE_TENSORBOARD", "False"]


def _install_fixture_experiment(paths) -> Path:
    """Copy the committed experiment into this test's RAY_TUNE_HOME and point its text
    records at this test's folders (what a user moving NLB_HOME would do with sed)."""
    import shutil

    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0-smoke"
    shutil.copytree(FIXTURE_EXPERIMENT, exp_dir)
    for path in exp_dir.rglob("*"):
        if path.suffix in (".yaml", ".csv") or path.name == "experiment_info.json":
            text = path.read_text()
            text = text.replace(f"{FIXTURE_HOME}/ray_results", str(paths.ray_tune_home))
            path.write_text(text.replace(FIXTURE_HOME, str(paths.nlb_home)))
    return exp_dir


@pytest.mark.slow
def test_run_search_resumes_an_experiment_made_by_an_earlier_version(ray_env):
    """Verify that an experiment written by version 0.1's code (two smoke trials, committed
    in tests/fixtures with Ray's pickled searcher, budget and trainable) resumes with this
    code: its two finished trials are kept untouched and one more trial is added."""
    paths, temp_dir = ray_env
    exp_dir = _install_fixture_experiment(paths)
    old = sorted(p.name for p in exp_dir.glob("trial_*"))
    stamps = {p: p.stat().st_mtime_ns for d in old for p in (exp_dir / d).rglob("*.pth")}
    summary = run_smoke_search(paths, temp_dir, samples=3, opts=FIXTURE_OPTS)
    assert summary.experiment_dir == exp_dir
    assert len(summary.trials) == 3 and {t["status"] for t in summary.trials} == {"done"}
    assert sorted(p.name for p in exp_dir.glob("trial_*"))[:2] == old
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    new = max(summary.trials, key=lambda t: t["trial_index"])
    assert new["trial_index"] == 2 and new["seed"] == 2


@pytest.mark.slow
def test_run_search_profile_stndt_trains_stndt_and_submits(ray_env, tmp_path):
    """Verify `--profile stndt`: trials train STNDT models with the contrastive term and its
    searched keys, the experiment records the profile and the co-bps objective, and the
    unchanged submission stage ranks, ensembles and scores their snapshots."""
    from nlb_ndt.checkpoint import load_model
    from nlb_ndt.model.stndt import STNDT
    from nlb_ndt.stages.make_submission import make_submission

    paths, temp_dir = ray_env
    summary = run_smoke_search(paths, temp_dir, samples=2, profile="stndt", gpus_per_trial=0)
    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0-stndt-cobps-smoke"
    assert summary.experiment_dir == exp_dir
    info = json.loads((exp_dir / "experiment_info.json").read_text())
    assert info["profile"] == "stndt" and info["objective"] == "best_val_cobps"
    assert {"TRAIN.CONTRAST_LAMBDA", "TRAIN.CONTRAST_MASK_RATIO"} <= set(info["search_space"])
    for trial in summary.trials:
        cfg = load_config(Path(trial["run_dir"]) / "config.yaml")
        assert cfg.MODEL.SPATIAL_ATTENTION and cfg.TRAIN.CONTRAST_LAMBDA > 0
        model, _ = load_model(next((Path(trial["run_dir"]) / "ckpts").glob("*.cobps.pth")))
        assert isinstance(model, STNDT)
    result = make_submission(["synthetic"], phase="val", paths=paths,
                             out=tmp_path / "stndt-val.h5")
    members = result.ensembles["synthetic"]["members"]
    assert {m["family"] for m in members} == {"stndt"}
    assert result.scores and result.scores[0]["co-bps"] is not None


@pytest.mark.slow
def test_skopt_lfads_search_runs_resumes_and_submits(ray_env, tmp_path):
    """Verify an LFADS search driven by the skopt searcher (the autolfads profile with the
    FIFO scheduler): it trains LFADS trials on the LFADS keys alone, grows by one trial when
    run again, and the unchanged submission stage ensembles its snapshots."""
    from nlb_ndt.stages.make_submission import make_submission

    paths, temp_dir = ray_env
    first = run_smoke_search(paths, temp_dir, samples=1, profile="autolfads", scheduler="fifo",
                             gpus_per_trial=0)
    second = run_smoke_search(paths, temp_dir, samples=2, profile="autolfads",
                              scheduler="fifo", gpus_per_trial=0)
    assert second.experiment_dir == first.experiment_dir and len(second.trials) == 2
    for trial in second.trials:
        cfg = load_config(Path(trial["run_dir"]) / "config.yaml")
        assert cfg.MODEL.FAMILY == "lfads" and trial["status"] == "done"
    result = make_submission(["synthetic"], phase="val", paths=paths, ensemble_size=1,
                             out=tmp_path / "lfads-val.h5")
    assert result.ensembles["synthetic"]["members"][0]["family"] == "lfads"
