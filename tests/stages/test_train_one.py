"""The single-run trainer (nlb_ndt.stages.train_one, via train.py) on the synthetic dataset."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from helpers import NAME, ROOT, TINY_MODEL_OPTS, load_script

from nlb_ndt.config.layout import SNAPSHOT_KINDS
from nlb_ndt.config.render import generate_configs
from nlb_ndt.model.checkpoint import load_model
from nlb_ndt.stages.train_one import train_one

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


@pytest.mark.slow
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


# ------------------------------------------------------ real processes, real signals
LONG = [*map(str, TINY_MODEL_OPTS), "TRAIN.NUM_UPDATES", "100000", "TRAIN.VAL_INTERVAL", "2",
        "TRAIN.CHECKPOINT_INTERVAL", "1000", "TRAIN.PATIENCE", "100000",
        "TRAIN.LR.WARMUP", "2", "USE_TENSORBOARD", "False"]


def _start(run_dir, *extra, threads: int = 1) -> subprocess.Popen:
    """`python train.py synthetic --out run_dir ...` in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), NAME, "--device", "cpu", "--out",
         str(run_dir), "--opts", *LONG, *extra], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for train.py")
        time.sleep(0.02)


def _state_epoch(path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["epoch"])


def _snapshot_records(run_dir) -> dict:
    """{kind: (epoch, metric)} of each snapshot file."""
    import torch

    from nlb_ndt.training.tracker import SNAPSHOT_RULES

    out = {}
    for kind, (metric, _) in SNAPSHOT_RULES.items():
        data = torch.load(run_dir / "ckpts" / f"{run_dir.name}.{kind}.pth", weights_only=True)
        out[kind] = (data["epoch"], data["metrics"][metric])
    return out


@pytest.mark.slow
def test_sigterm_saves_the_current_epoch_and_a_damaged_state_falls_back(rendered, tmp_path):
    """Verify that SIGTERM to a running train.py saves state.pt at the epoch it stops at
    (well past the last CHECKPOINT_INTERVAL save) and exits 130; that the same command
    continues from that epoch; and that a truncated state.pt is reported in one line and
    the run continues from the previous state instead of failing."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for(lambda: len(_rows(run_dir)) >= 3 if (run_dir / "metrics.csv").is_file()
              else False, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = int(re.search(r"stopped at epoch (\d+)", err)[1])
    assert stopped >= 6 and _state_epoch(run_dir / "state.pt") == stopped
    assert "run the same command again" in out

    proc = _start(run_dir, "TRAIN.STOP_AT_EPOCH", str(stopped + 2))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"at epoch {stopped}" in err and _state_epoch(run_dir / "state.pt") == stopped + 2
    assert _state_epoch(run_dir / "state.prev.pt") <= stopped + 2

    state = run_dir / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    previous = _state_epoch(run_dir / "state.prev.pt")
    proc = _start(run_dir, "TRAIN.STOP_AT_EPOCH", str(stopped + 4))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len([line for line in err.splitlines() if "unreadable" in line]) == 1
    assert f"resumed {run_dir} at epoch {previous}" in err


@pytest.mark.slow
def test_a_kill_after_a_snapshot_never_makes_a_snapshot_worse(rendered, tmp_path):
    """Verify that a run SIGKILLed right after writing a snapshot, then resumed with another
    thread count (so any replayed epochs diverge), never rolls back past that snapshot and
    never replaces any snapshot by a worse one."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, threads=1)
    lve = run_dir / "ckpts" / f"{run_dir.name}.lve.pth"
    _wait_for(lambda: len(_rows(run_dir)) >= 4 if (run_dir / "metrics.csv").is_file()
              else False, proc)
    stamp = lve.stat().st_mtime_ns
    _wait_for(lambda: lve.stat().st_mtime_ns != stamp, proc)  # a fresh lve snapshot
    proc.kill()
    proc.wait(timeout=30)
    before = _snapshot_records(run_dir)
    newest = max(epoch for epoch, _ in before.values())

    proc = _start(run_dir, threads=2)
    _wait_for(lambda: len(_rows(run_dir)) >= newest // 2 + 3, proc)
    proc.kill()
    out, err = proc.communicate(timeout=30)
    resumed = int(re.search(r"resumed .* at epoch (\d+)", err)[1])
    assert resumed >= newest  # the state went with the snapshot
    after = _snapshot_records(run_dir)
    for kind, (_, value) in before.items():
        better = after[kind][1] <= value if kind != "cobps" else after[kind][1] >= value
        assert better, (kind, before[kind], after[kind])
