"""Learning-rate schedules: the multipliers at chosen epochs, and the LambdaLR built from
the TRAIN.LR config node."""

from __future__ import annotations

import math

import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.config.typed import lr_config
from nlb_ndt.training.schedules import build_scheduler, inverse_sqrt, warmup_cosine


def test_warmup_cosine_values_at_chosen_epochs():
    """Verify the schedule: 0 at epoch 0, linear warmup, 0.5 halfway down, 0 at and past the end."""
    assert warmup_cosine(0, warmup=100, total=1100) == 0.0
    assert warmup_cosine(50, warmup=100, total=1100) == 0.5
    assert warmup_cosine(100, warmup=100, total=1100) == 1.0
    assert math.isclose(warmup_cosine(600, warmup=100, total=1100), 0.5)
    assert warmup_cosine(1100, warmup=100, total=1100) == 0.0
    assert warmup_cosine(1500, warmup=100, total=1100) == 0.0  # no rise past the end
    assert warmup_cosine(0, warmup=0, total=10) == 1.0
    assert math.isclose(inverse_sqrt(400, warmup=100), 0.5)


def _lr_after(lr_cfg, epochs: int, total: int = 1100) -> float:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = build_scheduler(opt, lr_config(lr_cfg), total_epochs=total)
    for _ in range(epochs):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"]


def test_build_scheduler_follows_the_lr_config():
    """Verify that cosine, invsqrt and SCHEDULE=False give the documented learning rates,
    and that an unknown scheduler name is refused."""
    lr = get_cfg_defaults().TRAIN.LR
    lr.WARMUP = 100
    assert _lr_after(lr, 50) == pytest.approx(1.0)  # 2.0 * 50/100
    assert _lr_after(lr, 600) == pytest.approx(1.0)  # halfway down the cosine
    lr.SCHEDULER = "invsqrt"
    assert _lr_after(lr, 400) == pytest.approx(1.0)  # 2.0 * sqrt(100/400)
    lr.SCHEDULE = False
    assert _lr_after(lr, 7) == 2.0
    lr.SCHEDULE, lr.SCHEDULER = True, "step"
    with pytest.raises(ValueError, match="cosine or invsqrt, not 'step'"):
        _lr_after(lr, 1)
