"""Trainer tests on the synthetic dataset: learning, snapshots, records, resume, seeding."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import BIN_MS, DATASET, GROUP, TEMPLATE

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.layout import SNAPSHOT_KINDS
from nlb_ndt.model.checkpoint import load_model
from nlb_ndt.training.interrupts import StopRequest
from nlb_ndt.training.run import train_model


def synthetic_cfg(**overrides):
    opts = []
    for key, value in overrides.items():
        opts += [key, value]
    return load_config(TEMPLATE, opts)


@pytest.mark.slow
def test_train_short_run_learns_and_beats_smoothing(nlb_env, tmp_path):
    """Verify that a short CPU training reaches val co-bps well above 0 and above smoothing."""
    from nlb_ndt.data import preprocess
    from nlb_ndt.scoring.baselines import smoothing_rates
    from nlb_ndt.scoring.metrics import co_bps

    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 150, "TRAIN.VAL_INTERVAL": 10})
    final = train_model(cfg, run_dir=tmp_path / "run", trial_id="t0", device="cpu")
    arrays = preprocess.load_tensors(DATASET, phase="val", bin_ms=BIN_MS)
    target = preprocess.load_val_target(DATASET, bin_ms=BIN_MS)[GROUP]
    smooth = smoothing_rates(arrays, bin_ms=20)
    smooth_cobps = co_bps(smooth["eval_rates_heldout"], target["eval_spikes_heldout"])
    assert final["done"]
    assert final["best_val_cobps"] > 0.05
    assert final["best_val_cobps"] > smooth_cobps, (final["best_val_cobps"], smooth_cobps)

    run = tmp_path / "run"
    for kind in SNAPSHOT_KINDS:
        model, info = load_model(run / "ckpts" / f"t0.{kind}.pth")
        assert info["kind"] == kind and info["dataset"] == "mc_maze_small"
    # The cobps snapshot reproduces its recorded co-bps through the public inference path.
    from nlb_ndt.model.inference import predict_rates

    model, info = load_model(run / "ckpts" / "t0.cobps.pth")
    rates = predict_rates(model, arrays["eval_spikes_heldin"])
    cobps = co_bps(rates[:, : info["t_obs"], info["n_heldin"]:],
                           target["eval_spikes_heldout"])
    assert cobps == pytest.approx(info["metrics"]["val_cobps"], abs=2e-3)
    assert cobps == pytest.approx(final["best_val_cobps"], abs=2e-3)

    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(10, 151, 10))
    info = json.loads((run / "run_info.json").read_text())
    assert info["seed"] == cfg.SEED and "torch" in info["versions"]
    assert (run / "config.yaml").read_text().startswith("CHECKPOINT_DIR")


def test_train_stops_when_patience_runs_out(nlb_env, tmp_path):
    """Verify that training stops as soon as the best masked loss is PATIENCE epochs old."""
    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 400, "TRAIN.VAL_INTERVAL": 5,
                           "TRAIN.PATIENCE": 10, "TRAIN.LR.INIT": 0.0})
    seen = []
    final = train_model(cfg, run_dir=tmp_path, trial_id="p", device="cpu", report=seen.append)
    # lr = 0: nothing improves after the first validation, so it stops at 5 + 10 + 5.
    assert final["done"] and final["epoch"] == 20
    assert [m["epoch"] for m in seen] == [5, 10, 15, 20]


@pytest.mark.slow
def test_train_resumes_and_seeds_reproducibly(nlb_env, tmp_path):
    """Verify that an interrupted run resumes to the same result as an uninterrupted one."""
    base = {"TRAIN.NUM_UPDATES": 20, "TRAIN.VAL_INTERVAL": 5, "TRAIN.CHECKPOINT_INTERVAL": 5,
            "TRAIN.AMP": False}
    full = train_model(synthetic_cfg(**base), run_dir=tmp_path / "a", device="cpu")
    # Stop after the epoch-10 validation, then run again: it continues from state.pt.
    seen = []
    stop_at_10 = train_model(synthetic_cfg(**base), run_dir=tmp_path / "b", device="cpu",
                             report=seen.append, stop=StopRequest(poll=lambda: bool(seen)))
    assert stop_at_10["epoch"] == 5
    resumed = train_model(synthetic_cfg(**base), run_dir=tmp_path / "b", device="cpu")
    assert resumed["epoch"] == 20
    assert resumed["masked_loss"] == pytest.approx(full["masked_loss"], rel=1e-5)
    assert resumed["val_cobps"] == pytest.approx(full["val_cobps"], rel=1e-4, abs=1e-6)
    # A finished run is not retrained.
    again = train_model(synthetic_cfg(**base), run_dir=tmp_path / "b", device="cpu")
    assert again == resumed


def test_train_rejects_nan_loss(nlb_env, tmp_path):
    """Verify that a diverging run fails loudly instead of writing garbage snapshots."""
    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 5, "TRAIN.LR.INIT": 1e6, "TRAIN.LR.WARMUP": 0,
                           "TRAIN.MAX_GRAD_NORM": 1e12})
    with pytest.raises(FloatingPointError):
        train_model(cfg, run_dir=tmp_path, device="cpu")


def test_validation_is_fp32_even_when_training_in_bf16(nlb_env, tmp_path):
    """Verify that with bf16 autocast in training, the validation metrics (which choose the
    snapshots, patience and the search objective) equal an fp32 re-evaluation of the same
    weights exactly, while a bf16 evaluation of those weights would differ."""
    import torch

    from nlb_ndt.training.run import build_trainer

    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 3, "TRAIN.VAL_INTERVAL": 1,
                           "TRAIN.AMP": True})
    trainer = build_trainer(cfg, run_dir=tmp_path / "run", device="cpu")
    trainer.amp = True  # force autocast in training, as on a GPU with native bf16
    for _ in range(2):
        trainer.train_epoch()
    during = trainer.validate()
    trainer.amp = False
    again = trainer.validate()
    assert during == again  # bit for bit: the same fp32 computation
    from nlb_ndt.model.masking import assemble

    batch = trainer.data.val.take(slice(0, 8))
    heldin = batch.heldin.clamp(max=trainer.max_spikes)
    inp, lab = assemble(heldin, heldin, batch.heldout, batch.forward)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_bf16, _ = trainer.model(inp, lab)
        loss_fp32, _ = trainer.model(inp, lab)
    assert float(loss_bf16) != float(loss_fp32)


def test_train_records_precision_and_writes_tensorboard_curves(nlb_env, tmp_path):
    """Verify that run_info.json says which precision trained the run, and that the run's
    TensorBoard events hold every curve at every validation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 6, "TRAIN.VAL_INTERVAL": 2,
                           "USE_TENSORBOARD": True})
    train_model(cfg, run_dir=tmp_path / "run", trial_id="t", device="cpu")
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["precision"] in ("fp32", "bf16 autocast") and info["optimizer"] == "adamw"
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/masked_loss", "val/unmasked_loss", "val/cobps",
            "train/lr"} <= tags
    assert [e.step for e in events.Scalars("val/cobps")] == [2, 4, 6]
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [e.value for e in events.Scalars("val/masked_loss")] == pytest.approx(
        [float(r["masked_loss"]) for r in rows], rel=1e-6)


def test_train_without_tensorboard_writes_no_events(nlb_env, tmp_path):
    """Verify that USE_TENSORBOARD False leaves no tb/ folder."""
    cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 2, "TRAIN.VAL_INTERVAL": 2,
                           "USE_TENSORBOARD": False})
    train_model(cfg, run_dir=tmp_path / "run", trial_id="t", device="cpu")
    assert not (tmp_path / "run" / "tb").exists()


def test_train_with_the_legacy_optimizer(nlb_env, tmp_path):
    """Verify that TRAIN.OPTIMIZER adamw_legacy trains with the original's AdamW and gives
    different weights from torch's AdamW under weight decay, the same seed otherwise."""
    import torch

    from nlb_ndt.training.optim import LegacyAdamW
    from nlb_ndt.training.run import build_trainer

    weights = {}
    for name in ("adamw", "adamw_legacy"):
        cfg = synthetic_cfg(**{"TRAIN.NUM_UPDATES": 2, "TRAIN.VAL_INTERVAL": 2,
                               "TRAIN.OPTIMIZER": name, "TRAIN.WEIGHT_DECAY": 0.1})
        trainer = build_trainer(cfg, run_dir=tmp_path / name, device="cpu")
        assert isinstance(trainer.optimizer, LegacyAdamW) == (name == "adamw_legacy")
        trainer.fit()
        weights[name] = trainer.model.decoder[0].weight.detach().clone()
    assert not torch.equal(weights["adamw"], weights["adamw_legacy"])
