"""Learning-rate schedules (replacing the long-dead pytorch_transformers).

The original steps its scheduler once per **epoch**; every "update" count here is an epoch.
"""

from __future__ import annotations

import math

import torch


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


def build_scheduler(optimizer: torch.optim.Optimizer, lr_cfg, *, total_epochs: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR from the TRAIN.LR node: "cosine" (the NLB templates) or "invsqrt"."""
    if not lr_cfg.SCHEDULE:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if lr_cfg.SCHEDULER == "cosine":
        def fn(s):
            return warmup_cosine(s, warmup=lr_cfg.WARMUP, total=total_epochs)
    elif lr_cfg.SCHEDULER == "invsqrt":
        def fn(s):
            return inverse_sqrt(s, warmup=lr_cfg.WARMUP)
    else:
        raise ValueError(f"TRAIN.LR.SCHEDULER must be cosine or invsqrt, not {lr_cfg.SCHEDULER!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
