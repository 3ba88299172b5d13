"""The trainable: trials run one after another in a reused worker process start exactly
as in a fresh process."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytest.importorskip("ray")


def _first_row(run_dir: Path) -> dict:
    with open(run_dir / "metrics.csv") as f:
        return next(csv.DictReader(f))


def _process(run_dir: Path) -> int:
    return int(re.search(r"process (\d+)", (run_dir / "trial.log").read_text())[1])


@pytest.mark.slow
def test_a_reused_worker_starts_its_next_trial_as_a_fresh_process_would(search_env, tmp_path):
    """Verify that with actor reuse the second trial runs in the first trial's process, and
    that its first validation's training loss equals, to the bit, that of the same trial
    config trained by train.py in a new process."""
    run, _ = search_env
    summary = run(samples=2, max_concurrent=1, reuse_actors=True)
    first, second = (Path(t["run_dir"]) for t in summary.trials)
    assert _process(first) == _process(second)  # one worker, reused

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), str(second / "config.yaml"),
                          "--out", str(tmp_path / "fresh"), "--device", "cpu"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reused, fresh = _first_row(second), _first_row(tmp_path / "fresh")
    assert reused["epoch"] == fresh["epoch"]
    assert reused["train_loss"] == fresh["train_loss"]
    assert reused["masked_loss"] == fresh["masked_loss"]


def test_a_pbt_trial_prunes_its_oldest_shared_states_only(tmp_path):
    """Verify that a trial keeps its `keep` newest shared states (Tune's checkpoint_<n>
    folders, numbered in order) and leaves every other file of its folder alone."""
    from nlb_ndt.hyperopt.trainable import prune_shared_states

    for n in range(15):
        (tmp_path / f"checkpoint_{n:06d}").mkdir()
        (tmp_path / f"checkpoint_{n:06d}" / "state.pt").write_bytes(b"x")
    (tmp_path / "state.pt").write_bytes(b"own")
    prune_shared_states(tmp_path, keep=12)
    left = sorted(p.name for p in tmp_path.glob("checkpoint_*"))
    assert left == [f"checkpoint_{n:06d}" for n in range(3, 15)]
    assert (tmp_path / "state.pt").read_bytes() == b"own"
    prune_shared_states(tmp_path, keep=12)  # nothing more to remove
    assert len(list(tmp_path.glob("checkpoint_*"))) == 12
