"""From a config to a trained run folder: the cached data, the run folder and the trainer
put together (`build_trainer`), and run (`train_model`, what train.py, a search trial and a
refit call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from nlb_ndt.config.typed import typed_config
from nlb_ndt.data.splits import training_data
from nlb_ndt.runtime import resolve_device
from nlb_ndt.training.interrupts import StopRequest
from nlb_ndt.training.run_folder import RunFolder
from nlb_ndt.training.trainer import Trainer


def build_trainer(cfg, *, run_dir: str | Path, trial_id: str = "run",
                  device: str | torch.device | None = None,
                  run_info: Mapping[str, Any] | None = None,
                  arrays: Mapping[str, np.ndarray] | None = None,
                  val_heldout_target: np.ndarray | None = None) -> Trainer:
    """A trainer on the cached data of `cfg` (or on in-memory `arrays` and target, as
    benchmarks pass), writing into `run_dir`."""
    settings = typed_config(cfg)
    device = resolve_device(device, cfg)
    data = training_data(settings.data, seed=settings.run.seed, arrays=arrays,
                         val_heldout_target=val_heldout_target,
                         device=device if settings.train.data_on_device else "cpu")
    folder = RunFolder(run_dir, trial_id, settings.run.checkpoint_dir)
    return Trainer(cfg, data, folder, device=device, run_info=run_info)


def train_model(cfg, *, run_dir: str | Path, trial_id: str = "run",
                device: str | torch.device | None = None,
                report: Callable[[dict], None] | None = None,
                stop: StopRequest | None = None, resume: bool = True,
                run_info: Mapping[str, Any] | None = None) -> dict:
    """Train one model from its config: the cached data in, a run folder out.

    Args:
        cfg: a frozen config (defaults + template + overrides).
        run_dir: the run's folder (a Ray trial's own folder in a search).
        trial_id: names the snapshots `<trial_id>.<lve|lfve|cobps>.pth`.
        device: "auto"/None (SYSTEM.DEVICE), "cpu", "cuda" or a torch.device.
        report: called with the metrics dict after every validation.
        stop: ends training at the end of an epoch when requested (Ctrl-C and SIGTERM
            request it too when called from the main thread).
        resume: continue from `run_dir/state.pt` when it exists.
        run_info: extra keys for run_info.json.

    Returns:
        The last metrics dict (keys in METRIC_FIELDS, plus "stopped" when stopped early).
    """
    trainer = build_trainer(cfg, run_dir=run_dir, trial_id=trial_id, device=device,
                            run_info=run_info)
    return trainer.fit(report=report, stop=stop, resume=resume)
