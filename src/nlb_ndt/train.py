"""Train one NDT: epochs of masked-modelling, validation, snapshots, early stopping.

Shape legend: B = trials, T_obs / T_fwd observed / forward bins, N_in / N_out neurons.

Faithful to the original where it matters for the numbers (AdamW on every parameter,
per-epoch warmup-cosine schedule, gradient clipping at 200, validation every
VAL_INTERVAL epochs on the whole val split, patience in epochs), with its known bugs fixed
(approach.md, 'Known bugs of the original'): training stops as soon as patience runs out
and never runs past NUM_UPDATES; the validation mask is fixed by a seed, so the selection
metric is not noise; the "unmasked" loss ignores every held-out neuron (the original's
variant stays available as TRAIN.LFVE_LEGACY); seeds are honoured.

Three snapshots per run, each overwritten when its metric improves:
  lve   - lowest masked val loss (the original's criterion and early-stopping metric),
  lfve  - lowest unmasked val loss (held-in reconstruction),
  cobps - highest val co-bps of the held-out neurons (nlb_tools' bits-per-spike formula).

A run folder also holds config.yaml, run_info.json, metrics.csv and state.pt (the
resumable training state, written every CHECKPOINT_INTERVAL epochs and at the end).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from . import preprocess
from .atomic import atomic_write, write_text_atomic
from .checkpoint import save_checkpoint
from .data import random_subset, split_tensors
from .masking import assemble, mask_heldin
from .metrics import co_bps
from .model import NDT, build_model
from .optim import build_optimizer
from .runs import (
    CONFIG_FILE,
    FINAL_KIND,
    METRIC_FIELDS,
    METRICS_FILE,
    RUN_INFO_FILE,
    STATE_FILE,
    snapshot_path,
)
from .runtime import bf16_native, library_versions, resolve_device, seed_everything
from .schedules import build_scheduler
from .tensorboard_log import ScalarLog

logger = logging.getLogger(__name__)

class Trainer:
    """Holds the model, optimiser and data of one run; `fit()` trains it."""

    def __init__(self, cfg, *, run_dir: str | Path, trial_id: str = "run",
                 device: str | torch.device | None = None, arrays: dict | None = None,
                 val_heldout_target: np.ndarray | None = None,
                 run_info: Mapping[str, Any] | None = None):
        """Args as `train_model`; `arrays` / `val_heldout_target` replace the cached
        tensors and the val target (benchmarks pass in-memory data)."""
        self.cfg = cfg
        self.extra_info = dict(run_info or {})
        self.run_dir = Path(run_dir)
        self.trial_id = trial_id
        self.device = resolve_device(device, cfg)
        data_cfg = cfg.DATA
        #: Train+val (a refit for the test phase): no val split is left to validate on.
        self.refit = data_cfg.TRAIN_SPLITS == "train+val"
        if data_cfg.TRAIN_SPLITS not in ("train", "train+val"):
            raise ValueError(f"DATA.TRAIN_SPLITS must be 'train' or 'train+val', not "
                             f"{data_cfg.TRAIN_SPLITS!r}")
        if arrays is None:
            # The test-phase tensors' train split is NLB's train+val trials.
            arrays = preprocess.load_tensors(data_cfg.DATASET,
                                             phase="test" if self.refit else "val",
                                             bin_ms=data_cfg.BIN_MS)
        if self.refit:
            val_heldout_target = np.empty((0,))
        elif val_heldout_target is None:
            target = preprocess.load_val_target(data_cfg.DATASET, bin_ms=data_cfg.BIN_MS)
            (group,) = target.keys()
            # co-bps is scored against the evaluation target (DMFC's carries NaNs outside
            # set -> go), exactly as nlb_tools' evaluate and the ranking stage do.
            val_heldout_target = target[group]["eval_spikes_heldout"]
        self.val_heldout_target = np.asarray(val_heldout_target)
        data_device = self.device if cfg.TRAIN.DATA_ON_DEVICE else torch.device("cpu")
        self.train_data = random_subset(split_tensors(arrays, "train", data_device),
                                        data_cfg.RANDOM_SUBSET_TRIALS, cfg.SEED)
        self.val_data = None if self.refit else split_tensors(arrays, "eval", data_device)
        self.n_heldin = self.train_data.heldin.shape[-1]
        self.n_heldout = self.train_data.heldout.shape[-1]
        self.t_obs = self.train_data.heldin.shape[1]
        self.t_fwd = self.train_data.forward.shape[1]
        # The original's clamp limit: the largest training count plus 3.
        self.max_spikes = int(self.train_data.heldin.max().item()) + 3
        trial_length = self.t_obs + self.t_fwd
        if cfg.MODEL.TRIAL_LENGTH > 0 and cfg.MODEL.TRIAL_LENGTH != trial_length:
            raise ValueError(f"MODEL.TRIAL_LENGTH={cfg.MODEL.TRIAL_LENGTH} but the data has "
                             f"{trial_length} bins; use 0 for the full length")
        seed_everything(cfg.SEED)
        self.model: NDT = build_model(cfg, num_neurons=self.n_heldin + self.n_heldout,
                                      trial_length=trial_length,
                                      max_spikes=self.max_spikes).to(self.device)
        self.forward_fn = self.model
        if cfg.TRAIN.COMPILE and self.device.type == "cuda":
            self.forward_fn = torch.compile(self.model)
        self.optimizer = build_optimizer(
            self.model.parameters(), cfg.TRAIN.OPTIMIZER, lr=cfg.TRAIN.LR.INIT,
            weight_decay=cfg.TRAIN.WEIGHT_DECAY, eps=cfg.TRAIN.EPS,
            fused=self.device.type == "cuda" and cfg.TRAIN.OPTIMIZER == "adamw")
        self.scheduler = build_scheduler(self.optimizer, cfg.TRAIN.LR,
                                         total_epochs=cfg.TRAIN.NUM_UPDATES)
        self.generator = torch.Generator(device=data_device).manual_seed(cfg.SEED)
        self.amp = bool(cfg.TRAIN.AMP) and bf16_native(self.device)
        #: Training precision; validation and snapshots' metrics are always fp32.
        self.precision = "bf16 autocast" if self.amp else "fp32"
        logger.info("training on %s in %s (validation in fp32)%s", self.device,
                    self.precision, "" if self.amp or not cfg.TRAIN.AMP else
                    ": TRAIN.AMP is on, but bf16 is not native here")
        self.epoch = 0
        self.best = {"masked": math.inf, "unmasked": math.inf, "cobps": -math.inf,
                     "masked_epoch": 0}
        self.history: list[dict] = []
        self.elapsed = 0.0
        self._curves = ScalarLog(self.run_dir, enabled=False)  # `fit` opens the real one

    # ----------------------------------------------------------------- training
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def train_epoch(self) -> float:
        """One pass over the training trials in shuffled batches; returns the mean loss."""
        cfg = self.cfg.TRAIN
        self.model.train()
        data = self.train_data
        n = data.n_trials
        order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        total = torch.zeros((), device=self.device)
        batches = 0
        for start in range(0, n, cfg.BATCH_SIZE):
            batch = data.take(order[start:start + cfg.BATCH_SIZE])
            heldin_in, heldin_lab = mask_heldin(batch.heldin, cfg, epoch=self.epoch,
                                                max_spikes=self.max_spikes,
                                                generator=self.generator)
            inputs, labels = assemble(heldin_in, heldin_lab, batch.heldout, batch.forward)
            inputs = inputs.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            with self._autocast():
                loss, _ = self.forward_fn(inputs, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.MAX_GRAD_NORM)
            self.optimizer.step()
            total += loss.detach().float()
            batches += 1
        self.scheduler.step()  # once per epoch, as the original
        return float(total.item()) / max(1, batches)

    # --------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, chunk: int = 512) -> dict[str, float]:
        """Masked loss (fixed mask), unmasked loss and co-bps on the whole val split."""
        cfg = self.cfg.TRAIN
        self.model.eval()
        data = self.val_data
        g = torch.Generator(device=data.heldin.device).manual_seed(cfg.VAL_MASK_SEED)
        legacy = "legacy" if cfg.LFVE_LEGACY else False
        sums = {"masked": [0.0, 0], "unmasked": [0.0, 0]}
        heldout_rates = []
        for start in range(0, data.n_trials, chunk):
            batch = data.take(slice(start, start + chunk))
            heldin = batch.heldin.clamp(max=self.max_spikes)
            masked_in, masked_lab = mask_heldin(heldin, cfg, epoch=self.epoch,
                                                max_spikes=self.max_spikes, generator=g,
                                                allow_span=False)
            for name, (inp, lab) in {
                "masked": assemble(masked_in, masked_lab, batch.heldout, batch.forward),
                "unmasked": assemble(heldin, heldin, batch.heldout, batch.forward,
                                     heldout_labels=legacy),
            }.items():
                inp, lab = inp.to(self.device), lab.to(self.device)
                # Always fp32: snapshot choice, patience and the search objective compare
                # these numbers, and bf16 rounding moves them (1.055578 vs 1.055523).
                loss, log_rates = self.model(inp, lab)
                count = int((lab != -100).sum())
                sums[name][0] += float(loss) * count
                sums[name][1] += count
                if name == "unmasked":
                    heldout_rates.append(
                        torch.exp(log_rates.float()[:, :self.t_obs, self.n_heldin:]).cpu())
        rates = torch.cat(heldout_rates).numpy()
        return {
            "masked_loss": sums["masked"][0] / max(1, sums["masked"][1]),
            "unmasked_loss": sums["unmasked"][0] / max(1, sums["unmasked"][1]),
            "val_cobps": co_bps(rates, self.val_heldout_target),
        }

    # ---------------------------------------------------------------- snapshots
    def snapshot_path(self, kind: str) -> Path:
        return snapshot_path(self.run_dir, self.trial_id, kind, self.cfg.CHECKPOINT_DIR)

    def _save_snapshot(self, kind: str, metrics: dict) -> None:
        save_checkpoint(
            self.snapshot_path(kind), self.model, self.cfg,
            n_heldin=self.n_heldin, t_obs=self.t_obs, bin_ms=self.cfg.DATA.BIN_MS,
            dataset=self.cfg.DATA.DATASET, epoch=self.epoch, trial_id=self.trial_id, kind=kind,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            versions=library_versions(),
        )

    def _state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def save_state(self) -> None:
        """Everything needed to continue this run exactly where it stopped."""
        state = {
            "epoch": self.epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "best": dict(self.best),
            # Dropout draws from torch's global generators: save them for exact resumes.
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                         else torch.empty(0, dtype=torch.uint8)),
            "history": self.history, "elapsed": self.elapsed,
        }
        with atomic_write(self._state_path()) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> bool:
        path = self._state_path()
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.device.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        self.best, self.history = state["best"], state["history"]
        self.epoch, self.elapsed = int(state["epoch"]), float(state["elapsed"])
        logger.info("resumed %s at epoch %d", self.run_dir, self.epoch)
        return True

    def _write_records(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / CONFIG_FILE, self.cfg.dump())
        info = {"trial_id": self.trial_id, "seed": int(self.cfg.SEED),
                "dataset": self.cfg.DATA.DATASET, "bin_ms": int(self.cfg.DATA.BIN_MS),
                "device": str(self.device), "precision": self.precision,
                "n_heldin": self.n_heldin,
                "n_heldout": self.n_heldout, "t_obs": self.t_obs, "t_fwd": self.t_fwd,
                "n_train": self.train_data.n_trials,
                "n_val": self.val_data.n_trials if self.val_data is not None else 0,
                "train_splits": self.cfg.DATA.TRAIN_SPLITS,
                "max_spikes": self.max_spikes,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "optimizer": self.cfg.TRAIN.OPTIMIZER, "versions": library_versions(),
                **self.extra_info}
        write_text_atomic(self.run_dir / RUN_INFO_FILE, json.dumps(info, indent=2))

    def _write_history(self) -> None:
        with atomic_write(self.run_dir / METRICS_FILE) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.history)

    # ---------------------------------------------------------------- main loop
    def fit(self, *, report: Callable[[dict], None] | None = None,
            should_stop: Callable[[], bool] | None = None, resume: bool = True) -> dict:
        if not (resume and self.load_state()):
            self.epoch = 0
        if self.history and self.history[-1]["done"]:
            # A finished run started again (a search resumed after its driver died) keeps
            # every file as it is, run_info.json included.
            logger.info("%s already finished at epoch %d", self.run_dir, self.epoch)
            return self.history[-1]
        self._write_records()
        # Curves for TensorBoard; a resumed run hides what the stopped one wrote after
        # its last saved state, so no epoch appears twice.
        self._curves = ScalarLog(self.run_dir / self.cfg.TENSORBOARD_DIR,
                                 bool(self.cfg.USE_TENSORBOARD),
                                 purge_step=self.epoch + 1 if self.epoch else None)
        try:
            return self._fit(report=report, should_stop=should_stop)
        finally:
            self._curves.close()

    def _fit(self, *, report: Callable[[dict], None] | None,
             should_stop: Callable[[], bool] | None) -> dict:
        cfg = self.cfg.TRAIN
        metrics: dict = self.history[-1] if self.history else {}
        last_log = time.perf_counter()
        train_loss = math.nan
        interrupted = False
        # STOP_AT_EPOCH ends training early while the schedule still spans NUM_UPDATES,
        # so a refit follows its original trial's learning rates up to the same epoch.
        stop = min(cfg.NUM_UPDATES, cfg.STOP_AT_EPOCH or cfg.NUM_UPDATES)
        validate = cfg.DO_VAL and not self.refit
        while self.epoch < stop:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch()
            self.epoch += 1
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss became {train_loss} at epoch {self.epoch}")
            self.elapsed += time.perf_counter() - t0
            last = self.epoch >= stop
            if validate and (self.epoch % cfg.VAL_INTERVAL == 0 or last):
                metrics = self._after_validation(train_loss, lr, last)
                if report is not None:
                    report(dict(metrics))
                if metrics["done"]:
                    break
                if should_stop is not None and should_stop():
                    interrupted = True  # not done: a later call resumes from here
                    break
            if self.epoch % cfg.CHECKPOINT_INTERVAL == 0:
                self.save_state()
            if self.epoch % cfg.LOG_INTERVAL == 0 or time.perf_counter() - last_log > 60:
                last_log = time.perf_counter()
                logger.info("epoch %d | loss %.4f | lr %.2e | best masked %.4f | best co-bps %.4f"
                            " | %.2f s/epoch", self.epoch, train_loss, lr, self.best["masked"],
                            self.best["cobps"], self.elapsed / max(1, self.epoch))
        if not interrupted and not metrics.get("done"):
            # The last epoch passed without a validation (DO_VAL off, or a refit with
            # nothing to validate on): close the record.
            metrics = self._after_validation(train_loss, self.optimizer.param_groups[0]["lr"], True)
            if report is not None:
                report(dict(metrics))
        self.save_state()
        return metrics

    def _after_validation(self, train_loss: float, lr: float, last: bool) -> dict:
        if self.val_data is None:  # a refit: the model of the last epoch is the result
            val = {"masked_loss": math.nan, "unmasked_loss": math.nan, "val_cobps": math.nan}
            if last:
                self._save_snapshot(FINAL_KIND, {"epoch": self.epoch, "train_loss": train_loss})
        else:
            val = self.validate()
        improved = []
        if val["masked_loss"] < self.best["masked"]:
            self.best["masked"], self.best["masked_epoch"] = val["masked_loss"], self.epoch
            improved.append("lve")
        if val["unmasked_loss"] < self.best["unmasked"]:
            self.best["unmasked"] = val["unmasked_loss"]
            improved.append("lfve")
        if val["val_cobps"] > self.best["cobps"]:
            self.best["cobps"] = val["val_cobps"]
            improved.append("cobps")
        patience_out = self.epoch - self.best["masked_epoch"] > self.cfg.TRAIN.PATIENCE
        metrics = {"epoch": self.epoch, "train_loss": train_loss, "lr": lr, **val,
                   "best_masked_loss": self.best["masked"],
                   "best_unmasked_loss": self.best["unmasked"],
                   "best_val_cobps": self.best["cobps"], "done": bool(last or patience_out),
                   "seconds": self.elapsed}
        for kind in improved:
            self._save_snapshot(kind, metrics)
        self._curves.add({k: metrics[k] for k in ("train_loss", "lr", "masked_loss",
                                                 "unmasked_loss", "val_cobps")}, self.epoch)
        self.history.append(metrics)
        self._write_history()
        if patience_out:
            logger.info("early stop at epoch %d: best masked loss is from epoch %d",
                        self.epoch, self.best["masked_epoch"])
        return metrics


def train_model(cfg, *, run_dir: str | Path, trial_id: str = "run",
                device: str | torch.device | None = None,
                report: Callable[[dict], None] | None = None,
                should_stop: Callable[[], bool] | None = None, resume: bool = True,
                run_info: Mapping[str, Any] | None = None) -> dict:
    """Train one model; see the module docstring for what lands in `run_dir`.

    Args:
        cfg: a frozen config (defaults + template + overrides).
        run_dir: the run's folder (a Ray trial's own folder in a search).
        trial_id: names the snapshots `<trial_id>.<lve|lfve|cobps>.pth`.
        device: "auto"/None (CUDA if visible), "cpu", "cuda" or a torch.device.
        report: called with the metrics dict after every validation.
        should_stop: polled after every validation; True ends training early.
        resume: continue from `run_dir/state.pt` when it exists.
        run_info: extra keys for run_info.json (a search trial's node and attempts).

    Returns:
        The last metrics dict (keys in METRIC_FIELDS).
    """
    trainer = Trainer(cfg, run_dir=run_dir, trial_id=trial_id, device=device,
                      run_info=run_info)
    return trainer.fit(report=report, should_stop=should_stop, resume=resume)
