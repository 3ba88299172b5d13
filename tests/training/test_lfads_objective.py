"""LFADS in the common training loop: the ELBO on batches, validation on posterior means,
snapshots that rebuild and predict through the public paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import BIN_MS, DATASET, GROUP, TEMPLATE

from nlb_ndt.config.defaults import load_config
from nlb_ndt.training.run import train_model

TINY_LFADS = ["MODEL.FAMILY", "lfads", "LFADS.IC_ENC_DIM", 8, "LFADS.CI_ENC_DIM", 4,
              "LFADS.CON_DIM", 4, "LFADS.CO_DIM", 2, "LFADS.IC_DIM", 6, "LFADS.GEN_DIM", 12,
              "LFADS.FAC_DIM", 5, "LFADS.KL_IC_SCALE", 1e-6, "LFADS.KL_CO_SCALE", 1e-6,
              "LFADS.LOSS_SCALE", 1.0, "LFADS.LR_INIT", 1e-2]


@pytest.mark.slow
def test_lfads_trains_in_the_common_loop_and_its_snapshots_predict(nlb_env, tmp_path):
    """Verify that MODEL.FAMILY lfads trains through train_model: the loss falls, the three
    snapshots are written with their metrics, and a snapshot reloads (its config alone
    rebuilds the encoder sizes) and reproduces its recorded val co-bps via predict_rates."""
    from nlb_ndt.checkpoint import load_model
    from nlb_ndt.data import preprocess
    from nlb_ndt.inference import predict_rates
    from nlb_ndt.model.lfads import LFADS
    from nlb_ndt.scoring.metrics import co_bps

    cfg = load_config(TEMPLATE, [*TINY_LFADS, "TRAIN.NUM_UPDATES", 4, "TRAIN.VAL_INTERVAL", 2,
                                 "TRAIN.LR.SCHEDULE", False, "USE_TENSORBOARD", False])
    seen = []
    final = train_model(cfg, run_dir=tmp_path / "run", trial_id="lf", device="cpu",
                        report=seen.append)
    assert final["done"] and final["epoch"] == 4 and math.isfinite(final["best_val_cobps"])
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    model, info = load_model(tmp_path / "run" / "ckpts" / "lf.cobps.pth")
    assert isinstance(model, LFADS) and info["cfg"].LFADS.ENCOD_DATA_DIM == model.n_heldin
    arrays = preprocess.load_tensors(DATASET, phase="val", bin_ms=BIN_MS)
    target = preprocess.load_val_target(DATASET, bin_ms=BIN_MS)[GROUP]
    rates = predict_rates(model, arrays["eval_spikes_heldin"])
    got = co_bps(rates[:, : info["t_obs"], info["n_heldin"]:], target["eval_spikes_heldout"])
    assert got == pytest.approx(info["metrics"]["val_cobps"], abs=1e-4)
    assert np.isfinite(rates).all()
