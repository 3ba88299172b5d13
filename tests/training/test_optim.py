"""The original NDT's AdamW arithmetic and the optimizer choice (nlb_ndt.training.optim)."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch

from nlb_ndt.training.optim import OPTIMIZERS, LegacyAdamW, build_optimizer

P0 = [0.5, -1.2, 2.0, 0.05, 3.0]
# One gradient per step; small entries make eps matter next to sqrt(v).
GRADS = [[0.3, -0.02, 1.5, 0.004, -0.7],
         [-0.1, 0.05, 1.2, -0.003, -0.9],
         [0.25, -0.01, 0.8, 0.002, 0.4],
         [0.2, 0.03, -0.5, 0.001, 0.6],
         [-0.4, 0.02, 0.3, -0.002, 0.1]]
BETAS = (0.9, 0.999)


def _legacy_rule(p0, grads, lrs, eps, wd, betas=BETAS):
    """The old pytorch_transformers AdamW update, written out in float64 numpy."""
    b1, b2 = betas
    p = np.array(p0, dtype=np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.asarray(g, dtype=np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        denom = np.sqrt(v) + eps
        step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = p - step_size * m / denom
        p = p - lr * wd * p
    return p


def _torch_rule(p0, grads, lrs, eps, wd, betas=BETAS):
    """torch.optim.AdamW's update, written out in float64 numpy (decay first)."""
    b1, b2 = betas
    p = np.array(p0, dtype=np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.asarray(g, dtype=np.float64)
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
        p = p - lr / (1 - b1 ** t) * m / denom
    return p


def _run(opt_factory, grads, dtype=torch.float32, scheduler_factory=None):
    """Parameters after one optimizer step per gradient, from P0."""
    p = torch.nn.Parameter(torch.tensor(P0, dtype=dtype))
    opt = opt_factory([p])
    sched = scheduler_factory(opt) if scheduler_factory else None
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
        if sched is not None:
            sched.step()
    return p.detach().double().numpy()


@pytest.mark.parametrize("n_steps", [1, 3])
def test_legacy_adamw_equals_the_written_rule(n_steps):
    """Verify the parameter after 1 and 3 steps equals the closed-form old update."""
    lr, eps, wd = 0.01, 1e-3, 0.1
    got = _run(lambda ps: LegacyAdamW(ps, lr=lr, eps=eps, weight_decay=wd), GRADS[:n_steps])
    want = _legacy_rule(P0, GRADS[:n_steps], [lr] * n_steps, eps, wd)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.all(np.abs(got - np.array(P0)) > 1e-5)  # every entry really moved


def test_legacy_adamw_differs_from_torch_adamw_with_decay_and_eps():
    """Verify the two rules differ when weight decay > 0 and eps matters, each as written."""
    lr, eps, wd = 0.01, 1e-3, 0.1
    legacy = _run(lambda ps: LegacyAdamW(ps, lr=lr, eps=eps, weight_decay=wd), GRADS[:3])
    modern = _run(lambda ps: torch.optim.AdamW(ps, lr=lr, eps=eps, weight_decay=wd),
                  GRADS[:3])
    np.testing.assert_allclose(modern, _torch_rule(P0, GRADS[:3], [lr] * 3, eps, wd),
                               rtol=0, atol=1e-6)
    assert np.max(np.abs(legacy - modern)) > 1e-4


def test_legacy_adamw_matches_torch_adamw_without_decay_and_tiny_eps():
    """Verify that with weight_decay=0 and a negligible eps the two optimizers agree."""
    lr, eps = 0.01, 1e-12
    legacy = _run(lambda ps: LegacyAdamW(ps, lr=lr, eps=eps), GRADS, dtype=torch.float64)
    modern = _run(lambda ps: torch.optim.AdamW(ps, lr=lr, eps=eps, weight_decay=0.0),
                  GRADS, dtype=torch.float64)
    np.testing.assert_allclose(legacy, modern, rtol=0, atol=1e-9)


def test_legacy_adamw_follows_a_lambda_lr_schedule_and_param_groups():
    """Verify each step uses the group's current lr (LambdaLR) and each group its own wd."""
    eps, base_lr = 1e-3, 0.02
    factor = [1.0, 0.5, 0.25, 0.125, 0.0625]
    got = _run(lambda ps: LegacyAdamW(ps, lr=base_lr, eps=eps, weight_decay=0.2), GRADS,
               dtype=torch.float64,
               scheduler_factory=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                   opt, lambda epoch: factor[min(epoch, len(factor) - 1)]))
    want = _legacy_rule(P0, GRADS, [base_lr * f for f in factor], eps, 0.2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)

    a = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    opt = LegacyAdamW([{"params": [a]}, {"params": [b], "lr": 0.05, "weight_decay": 0.0}],
                      lr=0.01, eps=eps, weight_decay=0.1)
    for g in GRADS[:3]:
        a.grad = torch.tensor(g, dtype=torch.float64)
        b.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    np.testing.assert_allclose(a.detach().numpy(), _legacy_rule(P0, GRADS[:3], [0.01] * 3,
                                                                eps, 0.1), atol=1e-9)
    np.testing.assert_allclose(b.detach().numpy(), _legacy_rule(P0, GRADS[:3], [0.05] * 3,
                                                                eps, 0.0), atol=1e-9)


def test_legacy_adamw_state_dict_resume_continues_identically():
    """Verify that a run saved after 2 steps and resumed equals one that never stopped."""
    def make(params):
        opt = LegacyAdamW(params, lr=0.01, eps=1e-3, weight_decay=0.1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))

    p = torch.nn.Parameter(torch.tensor(P0))
    opt, sched = make([p])
    for g in GRADS[:2]:
        p.grad = torch.tensor(g)
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"param": p.detach().clone(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, buffer)
    for g in GRADS[2:]:
        p.grad = torch.tensor(g)
        opt.step()
        sched.step()

    buffer.seek(0)
    saved = torch.load(buffer)
    q = torch.nn.Parameter(saved["param"])
    opt2, sched2 = make([q])
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert opt2.state[q]["step"] == 2
    for g in GRADS[2:]:
        q.grad = torch.tensor(g)
        opt2.step()
        sched2.step()
    assert torch.equal(p.detach(), q.detach())
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_legacy_adamw_skips_params_without_grad_and_checks_arguments():
    """Verify a parameter with no gradient is left alone and bad hyperparameters refused."""
    p = torch.nn.Parameter(torch.tensor(P0))
    LegacyAdamW([p], lr=0.1, weight_decay=0.5).step()
    assert torch.equal(p.detach(), torch.tensor(P0))
    for kwargs in ({"lr": -1.0}, {"betas": (1.0, 0.999)}, {"eps": -1e-8},
                   {"weight_decay": -0.1}):
        with pytest.raises(ValueError):
            LegacyAdamW([p], **kwargs)


def test_build_optimizer_by_name(caplog):
    """Verify each name builds its optimizer with the shared hyperparameters."""
    p = torch.nn.Parameter(torch.zeros(3))
    modern = build_optimizer([p], "adamw", lr=0.003, weight_decay=0.01, eps=1e-7, fused=False)
    assert type(modern) is torch.optim.AdamW
    group = modern.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (0.003, 0.01, 1e-7)
    assert not group["fused"]
    with caplog.at_level(logging.WARNING, logger="nlb_ndt.training.optim"):
        legacy = build_optimizer([p], "adamw_legacy", lr=0.003, weight_decay=0.01,
                                 eps=1e-7, fused=True)
    assert type(legacy) is LegacyAdamW
    group = legacy.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (0.003, 0.01, 1e-7)
    assert "no effect" in caplog.text
    assert type(build_optimizer([p], lr=1e-3, weight_decay=0.0, eps=1e-8)) \
        is torch.optim.AdamW  # the default


def test_build_optimizer_unknown_name_lists_valid_names():
    """Verify an unknown name is refused with every valid name in the message."""
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError) as info:
        build_optimizer([p], "sgd", lr=0.1, weight_decay=0.0, eps=1e-8)
    assert "'sgd'" in str(info.value)
    for name in OPTIMIZERS:
        assert name in str(info.value)
