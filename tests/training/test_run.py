"""From a config to a trainer: the cache or in-memory arrays, the run folder, the device."""

from __future__ import annotations

import math

from helpers import TEMPLATE, TINY_MODEL_OPTS

from nlb_ndt.config.defaults import load_config
from nlb_ndt.datasets import get_spec
from nlb_ndt.testing import poisson_tensors
from nlb_ndt.training.run import build_trainer


def test_build_trainer_on_in_memory_arrays_needs_no_cache(tmp_path, monkeypatch):
    """Verify that a trainer built on in-memory tensors (as benchmarks do) reads no cache,
    writes into the given folder and trains an epoch with a finite loss."""
    monkeypatch.setenv("NLB_HOME", str(tmp_path / "no_such_home"))
    cfg = load_config(TEMPLATE, [*TINY_MODEL_OPTS, "DATA.BIN_MS", 5, "TRAIN.NUM_UPDATES", 2])
    arrays = poisson_tensors(get_spec("mc_maze_small"), 5, rate=0.2)
    trainer = build_trainer(cfg, run_dir=tmp_path / "run", trial_id="mem", device="cpu",
                            arrays=arrays, val_heldout_target=arrays["eval_spikes_heldout"])
    assert trainer.folder.path == tmp_path / "run" and trainer.folder.trial_id == "mem"
    assert trainer.dims["t_obs"] == arrays["train_spikes_heldin"].shape[1]
    assert math.isfinite(trainer.train_epoch()) and trainer.epoch == 1
    final = trainer.fit(resume=False)
    assert final["epoch"] == 2 and (tmp_path / "run" / "ckpts" / "mem.lve.pth").is_file()
    assert not (tmp_path / "no_such_home").exists()
