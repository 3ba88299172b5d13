"""Schedules in epochs: the learning rate (replacing the long-dead pytorch_transformers),
and when a run validates and saves (`LoopPlan`).

The original steps its scheduler once per **epoch**; every "update" count here is an epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nlb_ndt.config.typed import LRConfig, TrainConfig


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup from 0, then a half cosine down to 0 at `total`.

    s / W while s < W; then 0.5 * (1 + cos(pi * (s - W) / (total - W))). As in the
    original, step 0 gives 0 when W > 0 (the first epoch trains at lr = 0). Unlike the
    original, the multiplier stays 0 past `total` instead of climbing back up.
    """
    if step < warmup:
        return step / max(1, warmup)
    if step >= total:
        return 0.0
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def inverse_sqrt(step: int, *, warmup: int) -> float:
    """LR multiplier: linear warmup, then (W / s)^0.5 (a corrected form of the original's)."""
    if step < warmup:
        return step / max(1, warmup)
    return math.sqrt(max(1, warmup) / max(1, step))


def build_scheduler(optimizer: torch.optim.Optimizer, lr: LRConfig, *, total_epochs: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR from the TRAIN.LR settings: "cosine" (the NLB templates) or "invsqrt"."""
    if not lr.schedule:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if lr.scheduler == "cosine":
        def fn(s):
            return warmup_cosine(s, warmup=lr.warmup, total=total_epochs)
    elif lr.scheduler == "invsqrt":
        def fn(s):
            return inverse_sqrt(s, warmup=lr.warmup)
    else:
        raise ValueError(f"TRAIN.LR.SCHEDULER must be cosine or invsqrt, not {lr.scheduler!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


@dataclass(frozen=True)
class LoopPlan:
    """When the loop validates and what it saves at the end.

    Attributes:
        stop_epoch: the last epoch trained.
        val_interval: validate every this many epochs and at the last one (0: never).
        checkpoint_interval: save the state every this many epochs.
        final_snapshot: save the last epoch's model as `<trial>.final.pth` (a refit's
            result: with no val split there is nothing to choose a snapshot by).
    """

    stop_epoch: int
    val_interval: int
    checkpoint_interval: int
    final_snapshot: bool

    def validates(self, epoch: int) -> bool:
        return self.val_interval > 0 and (epoch % self.val_interval == 0 or
                                          epoch >= self.stop_epoch)


def loop_plan(train: TrainConfig, *, has_val: bool) -> LoopPlan:
    """The plan of a run: validate when there is a val split (with DO_VAL off, only at
    the last epoch), else train to the end and keep the final model."""
    interval = (train.val_interval if train.do_val else train.stop_epoch) if has_val else 0
    return LoopPlan(stop_epoch=train.stop_epoch, val_interval=max(0, interval),
                    checkpoint_interval=train.checkpoint_interval,
                    final_snapshot=not has_val)
