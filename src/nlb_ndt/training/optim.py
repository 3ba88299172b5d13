"""The optimizer choice, including the original NDT's AdamW arithmetic.

The original NDT trained with the AdamW of the old `pytorch_transformers` package, whose
update is not torch.optim.AdamW's: it adds eps to sqrt(v) before the bias correction
(the correction is folded into the step size instead) and applies the decoupled weight
decay after the Adam step, to the already-updated parameter. The two agree only when
weight decay is 0 and eps is negligible, so reproducing the original's training numbers
needs the old rule; `LegacyAdamW` implements it as written below, and `build_optimizer`
lets a config choose between it and torch's AdamW (the default).
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import torch

logger = logging.getLogger(__name__)

#: Names `build_optimizer` accepts.
OPTIMIZERS = ("adamw", "adamw_legacy")


class LegacyAdamW(torch.optim.Optimizer):
    """AdamW with the old pytorch_transformers update rule.

    For each parameter p with gradient g, at step t (1-based):

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        denom = sqrt(v) + eps                                   # eps before correction
        step_size = lr * sqrt(1 - b2**t) / (1 - b1**t)          # lr if not correct_bias
        p = p - step_size * m / denom
        p = p - lr * weight_decay * p                           # decay after the step

    whereas torch.optim.AdamW decays first (p *= 1 - lr * weight_decay) and uses
    denom = sqrt(v) / sqrt(1 - b2**t) + eps. `lr` is read from the param group at every
    step, so LR schedulers work as with any torch optimizer; the state (step count,
    m, v) round-trips through state_dict for resumed runs.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        lr: learning rate.
        betas: (b1, b2), the decay rates of the first and second moment averages.
        eps: added to sqrt(v); the old package's default was 1e-6.
        weight_decay: decoupled weight decay factor (multiplied by lr).
        correct_bias: whether to use the bias-corrected step size (the original did).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"learning rate must be >= 0, not {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), not {betas}")
        if eps < 0.0:
            raise ValueError(f"eps must be >= 0, not {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, not {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None
             ) -> torch.Tensor | None:
        """Apply one update to every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("LegacyAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"]

                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(group["eps"])
                step_size = lr
                if group["correct_bias"]:
                    step_size = lr * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
                p.addcdiv_(exp_avg, denom, value=-step_size)
                if group["weight_decay"] > 0.0:
                    # After the Adam step, on the updated p: the old package's order.
                    p.add_(p, alpha=-lr * group["weight_decay"])
        return loss


def build_optimizer(params: Iterable, name: str = "adamw", *, lr: float,
                    weight_decay: float, eps: float, fused: bool = False
                    ) -> torch.optim.Optimizer:
    """The optimizer a config names, with the hyperparameters every choice shares.

    Args:
        params: parameters or param-group dicts.
        name: "adamw" (torch.optim.AdamW, the default) or "adamw_legacy" (LegacyAdamW,
            the original NDT's arithmetic).
        lr, weight_decay, eps: as for both optimizers; betas stay (0.9, 0.999).
        fused: use torch's fused AdamW kernel (passed only when True, since older
            builds and CPU tensors may refuse the argument); LegacyAdamW has no fused
            kernel and ignores it with a warning.
    """
    if name == "adamw":
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, **extra)
    if name == "adamw_legacy":
        if fused:
            logger.warning("fused=True has no effect on adamw_legacy (no fused kernel); "
                           "using the plain implementation")
        return LegacyAdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
