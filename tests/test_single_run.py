"""The single-run trainer (nlb_ndt.single_run, via train.py) on the synthetic dataset."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import NAME, TINY_MODEL_OPTS, load_script

from nlb_ndt.checkpoint import load_model
from nlb_ndt.runs import SNAPSHOT_KINDS
from nlb_ndt.single_run import train_one
from nlb_ndt.templates import generate_configs

SHORT = [*map(str, TINY_MODEL_OPTS), "TRAIN.NUM_UPDATES", "6", "TRAIN.VAL_INTERVAL", "2",
         "TRAIN.CHECKPOINT_INTERVAL", "2"]


@pytest.fixture
def rendered(nlb_env, tmp_path, monkeypatch):
    """Rendered configs in this test's own CONFIG_DIR and CHECKPOINT_DIR."""
    from nlb_ndt.paths import get_paths

    monkeypatch.setenv("CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    paths = get_paths()
    generate_configs([NAME], paths.config_dir, paths=paths)
    return paths


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_script_trains_one_model_in_a_trial_layout(rendered, capsys):
    """Verify that `train.py NAME --seed S --opts ...` trains one model into
    $CHECKPOINT_DIR/NAME-sS with a trial's files, and prints where its snapshots are."""
    code = load_script("train").main([NAME, "--seed", "7", "--device", "cpu",
                                      "--opts", *SHORT])
    out = capsys.readouterr().out
    assert code == 0
    run_dir = rendered.checkpoint_dir / f"{NAME}-s7"
    for name in ("config.yaml", "run_info.json", "metrics.csv", "state.pt", "tb"):
        assert (run_dir / name).exists(), name
    for kind in SNAPSHOT_KINDS:
        path = run_dir / "ckpts" / f"{NAME}-s7.{kind}.pth"
        assert path.is_file() and str(path) in out
        model, info = load_model(path)
        assert info["cfg"].SEED == 7 and info["cfg"].MODEL.NUM_LAYERS == 1
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 7 and info["device"] == "cpu"
    assert [int(r["epoch"]) for r in _rows(run_dir)] == [2, 4, 6]


def test_train_one_again_changes_nothing_and_retrains_a_trial_from_its_config(rendered,
                                                                             tmp_path):
    """Verify that the same run started again keeps its finished files as they are,
    `resume=False` starts it afresh, and a trial's own config.yaml retrains that trial."""
    first = train_one(NAME, opts=SHORT, out=tmp_path / "run", device="cpu", progress=False)
    stamp = (tmp_path / "run" / "metrics.csv").stat().st_mtime_ns
    again = train_one(NAME, opts=SHORT, out=tmp_path / "run", device="cpu", progress=False)
    assert again.metrics == first.metrics
    assert (tmp_path / "run" / "metrics.csv").stat().st_mtime_ns == stamp
    fresh = train_one(NAME, opts=SHORT, out=tmp_path / "run", device="cpu", resume=False,
                      progress=False)
    assert (tmp_path / "run" / "metrics.csv").stat().st_mtime_ns != stamp
    assert [int(r["epoch"]) for r in _rows(tmp_path / "run")] == [2, 4, 6]
    assert fresh.metrics["epoch"] == 6
    retrain = train_one(tmp_path / "run" / "config.yaml", out=tmp_path / "retrain",
                        device="cpu", progress=False)
    assert set(retrain.snapshots) == set(SNAPSHOT_KINDS)
    assert retrain.metrics["best_masked_loss"] == pytest.approx(
        first.metrics["best_masked_loss"], rel=1e-6)  # same config and seed, same run


def test_train_script_errors_are_one_line(rendered, capsys, tmp_path):
    """Verify a missing config and odd --opts each fail with one line and write nothing."""
    script = load_script("train")
    assert script.main(["no_such_run"]) == 1
    assert script.main([str(tmp_path / "missing.yaml")]) == 1
    assert script.main([NAME, "--opts", "TRAIN.NUM_UPDATES"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "no_such_run" in err[0] and "missing.yaml" in err[1] and "KEY VALUE" in err[2]
    assert not rendered.checkpoint_dir.exists()
