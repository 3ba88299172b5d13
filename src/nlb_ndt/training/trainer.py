"""Train one model: epochs of its objective, validation, snapshots, early stopping.

Faithful to the original where it matters for the numbers (AdamW on every parameter,
per-epoch warmup-cosine schedule, gradient clipping at 200, validation every
VAL_INTERVAL epochs on the whole val split, patience in epochs), with its known bugs fixed
(approach.md, 'Known bugs of the original'): training stops as soon as patience runs out
and never runs past NUM_UPDATES; the validation mask is fixed by a seed, so the selection
metric is not noise; the "unmasked" loss ignores every held-out neuron (the original's
variant stays available as TRAIN.LFVE_LEGACY); seeds are honoured.

Who does what:
    Trainer         the model, optimiser, schedule and the loop (`fit`)
    MaskedModelling the NDT's and STNDT's batch loss and validation (training.masked_modelling);
                    LfadsObjective LFADS's (training.lfads_objective)
    SnapshotTracker which snapshots a validation improves; patience (training.tracker)
    RunFolder       every file: records, metrics.csv, state.pt, snapshots (training.run_folder)
    StopRequest     Ctrl-C / SIGTERM / a deadline: save the state and return (training.interrupts)

The state is saved with every snapshot, just before it (and every CHECKPOINT_INTERVAL
epochs, and when stopped), so a resumed run never rolls back past a snapshot it wrote, and
completes the snapshots of its last epoch if a kill interrupted them; at resume the best
values are also read back from the snapshots on disk (newer than the state only when the
state had to fall back to state.prev.pt), so it never replaces one by a worse model.
A refit (DATA.TRAIN_SPLITS train+val) is the same loop with no validation and a `final`
snapshot at its last epoch. `nlb_ndt.training.run` builds a trainer from a config.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping

import torch

from nlb_ndt.config.layout import FINAL_KIND
from nlb_ndt.config.typed import model_family, typed_config
from nlb_ndt.data.splits import TrainingData
from nlb_ndt.model.factory import build_model
from nlb_ndt.runtime import (
    bf16_native,
    global_rng_state,
    library_versions,
    resolve_device,
    seed_everything,
    set_global_rng_state,
)
from nlb_ndt.training.interrupts import StopRequest, stop_on_signals
from nlb_ndt.training.lfads_objective import LfadsObjective, with_data_sizes
from nlb_ndt.training.masked_modelling import MaskedModelling
from nlb_ndt.training.optim import build_optimizer
from nlb_ndt.training.run_folder import RunFolder
from nlb_ndt.training.schedules import build_scheduler, loop_plan
from nlb_ndt.training.tracker import SNAPSHOT_RULES, SnapshotTracker

logger = logging.getLogger(__name__)

#: Validation metrics of a run without a val split.
NO_VALIDATION = {"masked_loss": math.nan, "unmasked_loss": math.nan, "val_cobps": math.nan}


class Trainer:
    """Holds the model, optimiser and data of one run; `fit()` trains it.

    Args:
        cfg: the run's frozen config (its yacs node: stored in snapshots and config.yaml).
        data: the splits to train and validate on (`nlb_ndt.data.splits.training_data`).
        folder: the run folder that owns the files.
        device: "auto"/None (SYSTEM.DEVICE), "cpu", "cuda" or a torch.device.
        run_info: extra keys for run_info.json (a search trial's node and attempts).
    """

    def __init__(self, cfg, data: TrainingData, folder: RunFolder, *,
                 device: str | torch.device | None = None,
                 run_info: Mapping[str, Any] | None = None):
        self.dims = data.dims
        self.family = model_family(cfg.MODEL)
        self.cfg = with_data_sizes(cfg, self.dims) if self.family == "lfads" else cfg
        self.settings = typed_config(self.cfg)
        self.train_cfg = self.settings.train
        self.data = data
        self.folder = folder
        self.extra_info = dict(run_info or {})
        self.device = resolve_device(device, cfg)
        self.plan = loop_plan(self.train_cfg, has_val=data.val is not None)
        # The original's clamp limit: the largest training count plus 3.
        self.max_spikes = int(data.train.heldin.max().item()) + 3
        self.model = self._build_model()
        # The family's objective; the loop below is the same for every family.
        self.objective = (LfadsObjective.from_config(self.cfg, device=self.device)
                          if self.family == "lfads" else
                          MaskedModelling(self.train_cfg, max_spikes=self.max_spikes,
                                          device=self.device))
        self.forward_fn = self.model
        if self.train_cfg.compile and self.device.type == "cuda":
            self.forward_fn = torch.compile(self.model)
        self.optimizer = build_optimizer(
            self.model.parameters(), self.train_cfg.optimizer,
            **self.objective.optimizer_settings,
            fused=self.device.type == "cuda" and self.train_cfg.optimizer == "adamw")
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg.lr,
                                         total_epochs=self.train_cfg.num_updates)
        self.generator = torch.Generator(device=data.train.heldin.device).manual_seed(
            self.settings.run.seed)
        self.amp = self.train_cfg.amp and bf16_native(self.device)
        #: Training precision; validation and snapshots' metrics are always fp32.
        self.precision = "bf16 autocast" if self.amp else "fp32"
        logger.info("training on %s in %s (validation in fp32)%s", self.device,
                    self.precision, "" if self.amp or not self.train_cfg.amp else
                    ": TRAIN.AMP is on, but bf16 is not native here")
        self.epoch = 0
        self.tracker = SnapshotTracker(self.train_cfg.patience)
        self.history: list[dict] = []
        self.elapsed = 0.0
        self._state_epoch = -1  # the epoch of the state on disk (no second write for it)
        self._logged_at = time.perf_counter()

    def _build_model(self) -> torch.nn.Module:
        trial_length = self.dims["t_obs"] + self.dims["t_fwd"]
        wanted = self.settings.model.trial_length
        if wanted > 0 and wanted != trial_length:
            raise ValueError(f"MODEL.TRIAL_LENGTH={wanted} but the data has "
                             f"{trial_length} bins; use 0 for the full length")
        seed_everything(self.settings.run.seed)
        return build_model(self.cfg, num_neurons=self.dims["n_heldin"] + self.dims["n_heldout"],
                           trial_length=trial_length,
                           max_spikes=self.max_spikes).to(self.device)

    # ------------------------------------------------------------------ epochs
    def train_epoch(self) -> float:
        """One pass over the training trials in shuffled batches; returns the mean loss."""
        self.model.train()
        data, batch_size = self.data.train, self.train_cfg.batch_size
        order = torch.randperm(data.n_trials, generator=self.generator,
                               device=self.generator.device)
        total = torch.zeros((), device=self.device)
        batches = 0
        for start in range(0, data.n_trials, batch_size):
            batch = data.take(order[start:start + batch_size])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = self.objective.loss(self.forward_fn, batch, epoch=self.epoch,
                                           generator=self.generator, model=self.model)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.max_grad_norm)
            self.optimizer.step()
            total += loss.detach().float()
            batches += 1
        self.scheduler.step()  # once per epoch, as the original
        self.epoch += 1
        return float(total.item()) / max(1, batches)

    def validate(self) -> dict[str, float]:
        """masked_loss, unmasked_loss and val_cobps on the whole val split."""
        return self.objective.validate(self.model, self.data.val, self.data.val_heldout_target,
                                       epoch=self.epoch)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly where it stopped."""
        return {
            "epoch": self.epoch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "tracker": self.tracker.state_dict(),
            **global_rng_state(self.device), "history": self.history, "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from `state_dict()`'s output (or a version-0.1 state.pt)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"].cpu())
        set_global_rng_state(state, self.device)
        self.tracker.load_state_dict(state.get("tracker") or state["best"])
        self.history = list(state["history"])
        self.epoch, self.elapsed = int(state["epoch"]), float(state["elapsed"])
        self._use_configured_lr()

    def _use_configured_lr(self) -> None:
        """Keep the configured learning rate over a loaded state's: they differ only when
        population-based training continues another trial's state with a perturbed one."""
        wanted = self.objective.optimizer_settings["lr"]
        for i, group in enumerate(self.optimizer.param_groups):
            base = self.scheduler.base_lrs[i]
            if base != wanted:
                group["lr"] = wanted * (group["lr"] / base if base else 1.0)
                group["initial_lr"] = self.scheduler.base_lrs[i] = wanted

    def save_state(self) -> None:
        if self._state_epoch != self.epoch:
            self.folder.save_state(self.state_dict())
            self._state_epoch = self.epoch

    def resume(self) -> bool:
        """Continue from the run folder's saved state, with the best values of the
        snapshots on disk where those are better; False when there is no state."""
        state = self.folder.load_state(map_location=self.device)
        if state is not None:
            self.load_state_dict(state)
            self._state_epoch = self.epoch
            logger.info("resumed %s at epoch %d", self.folder.path, self.epoch)
            self._complete_snapshots()
        for kind in SNAPSHOT_RULES:
            record = self.folder.snapshot_record(kind)
            if record is not None and self.tracker.adopt(kind, record):
                logger.info("the %s snapshot (epoch %s) is newer than the saved state: its "
                            "value is the one to beat", kind, record.get("epoch"))
        return state is not None

    def _complete_snapshots(self) -> None:
        """Write the snapshots of the state's own epoch that a kill left unwritten: the
        loaded model is exactly the model they hold."""
        if not self.history or int(self.history[-1]["epoch"]) != self.epoch:
            return
        metrics = self.history[-1]
        kinds = [kind for kind, best in self.tracker.best.items() if best.epoch == self.epoch]
        if metrics["done"] and self.plan.final_snapshot:
            kinds.append(FINAL_KIND)
        for kind in kinds:
            record = self.folder.snapshot_record(kind) if kind in SNAPSHOT_RULES else None
            if record is None or record["epoch"] != self.epoch:
                logger.info("writing the %s snapshot of epoch %d, which the stopped run did "
                            "not finish writing", kind, self.epoch)
                self.folder.save_snapshot(kind, self.model, self.cfg,
                                          **self._snapshot_info(metrics))

    @property
    def finished(self) -> bool:
        return bool(self.history and self.history[-1]["done"])

    # ---------------------------------------------------------------- the loop
    def fit(self, *, report: Callable[[dict], None] | None = None,
            stop: StopRequest | None = None, resume: bool = True) -> dict:
        """Train until the plan's last epoch, patience, or a stop request; see the module
        docstring for what is written. Returns the last metrics (METRIC_FIELDS; a stopped
        run's carry "stopped": the reason)."""
        if resume:
            self.resume()
        if self.finished:
            # A finished run started again (a search resumed after its driver died) keeps
            # every file as it is, run_info.json included.
            logger.info("%s already finished at epoch %d", self.folder.path, self.epoch)
            return self.history[-1]
        self.folder.write_records(self.cfg.dump(), self.run_info())
        run = self.settings.run
        with self.folder.curves(run.tensorboard_dir, run.use_tensorboard,
                                resume_epoch=self.epoch) as curves, \
                stop_on_signals(stop or StopRequest()) as stop:
            return self._loop(curves, report or (lambda metrics: None), stop)

    def _loop(self, curves, report: Callable[[dict], None], stop: StopRequest) -> dict:
        metrics = self.history[-1] if self.history else {}
        train_loss, first = math.nan, self.epoch
        self._logged_at = time.perf_counter()
        while self.epoch < self.plan.stop_epoch:
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            train_loss = self.train_epoch()
            self.elapsed += time.perf_counter() - started
            if self.epoch == first + 1:  # what a process pays before training: see bench/
                logger.info("first epoch done: epoch %d took %.2f s", self.epoch,
                            time.perf_counter() - started)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss became {train_loss} at epoch "
                                         f"{self.epoch}")
            validated = self.plan.validates(self.epoch)
            if validated:
                metrics = self._record(train_loss, lr, self.validate(), curves)
                report(dict(metrics))
                if metrics["done"]:
                    return metrics
            if stop.due(validated=validated):
                self.save_state()
                logger.info("%s: stopped at epoch %d (%s); the state is saved, so running "
                            "it again continues", self.folder.path, self.epoch, stop.reason)
                return {**metrics, "epoch": self.epoch, "done": False, "stopped": stop.reason}
            if self.epoch % self.plan.checkpoint_interval == 0:
                self.save_state()
            self._log_progress(train_loss, lr)
        # The last epoch passed without a validation (a refit): close the record.
        metrics = self._record(train_loss, self.optimizer.param_groups[0]["lr"], NO_VALIDATION,
                               curves, last=True)
        report(dict(metrics))
        return metrics

    def _record(self, train_loss: float, lr: float, val: Mapping[str, float], curves, *,
                last: bool = False) -> dict:
        """Let the tracker judge one validation, write what it decides, append the row."""
        improved = self.tracker.update(val, self.epoch)
        patience_out = self.plan.val_interval > 0 and self.tracker.patience_out(self.epoch)
        done = last or patience_out or self.epoch >= self.plan.stop_epoch
        metrics = {"epoch": self.epoch, "train_loss": train_loss, "lr": lr, **val,
                   **self.tracker.summary(), "done": bool(done), "seconds": self.elapsed}
        kinds = improved + ([FINAL_KIND] if done and self.plan.final_snapshot else [])
        curves.add({k: metrics[k] for k in ("train_loss", "lr", "masked_loss",
                                            "unmasked_loss", "val_cobps")}, self.epoch)
        self.history.append(metrics)
        self.folder.write_history(self.history)
        if kinds or done or self.epoch % self.plan.checkpoint_interval == 0:
            # The state first: a run killed between the two writes resumes at this epoch
            # and completes the snapshots from it (`_complete_snapshots`).
            self.save_state()
        for kind in kinds:
            self.folder.save_snapshot(kind, self.model, self.cfg, **self._snapshot_info(metrics))
        if patience_out:
            logger.info("early stop at epoch %d: best masked loss is from epoch %d",
                        self.epoch, self.tracker.patience_epoch)
        return metrics

    def _snapshot_info(self, metrics: Mapping[str, Any]) -> dict:
        return {"n_heldin": self.dims["n_heldin"], "t_obs": self.dims["t_obs"],
                "bin_ms": self.settings.data.bin_ms, "dataset": self.settings.data.dataset,
                "epoch": self.epoch, "versions": library_versions(),
                "metrics": {k: float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float))}}

    def _log_progress(self, train_loss: float, lr: float) -> None:
        now = time.perf_counter()
        if self.epoch % self.train_cfg.log_interval and now - self._logged_at < 60:
            return
        self._logged_at = now
        best = self.tracker.summary()
        logger.info("epoch %d | loss %.4f | lr %.2e | best masked %.4f | best co-bps %.4f | "
                    "%.2f s/epoch", self.epoch, train_loss, lr, best["best_masked_loss"],
                    best["best_val_cobps"], self.elapsed / max(1, self.epoch))

    def run_info(self) -> dict:
        """run_info.json: the data, device, precision and library versions of this run."""
        data = self.settings.data
        return {"trial_id": self.folder.trial_id, "seed": self.settings.run.seed,
                "dataset": data.dataset, "bin_ms": data.bin_ms, "device": str(self.device),
                "precision": self.precision, **self.dims,
                "n_train": self.data.train.n_trials,
                "n_val": self.data.val.n_trials if self.data.val is not None else 0,
                "train_splits": data.train_splits, "max_spikes": self.max_spikes,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "optimizer": self.train_cfg.optimizer, "versions": library_versions(),
                **self.extra_info}
