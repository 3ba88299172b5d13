"""LFADS's loss pieces against closed forms computed by hand, coordinated dropout's gradient
blocking, and the assembled loss."""

from __future__ import annotations

import math

import pytest
import torch

from nlb_ndt.config.lfads import LfadsConfig
from nlb_ndt.model.lfads import LFADS
from nlb_ndt.training.lfads_loss import (
    ar1_log_prob,
    coordinated_dropout,
    kl_co,
    kl_ic,
    l2_penalty,
    lfads_loss,
    normal_log_prob,
    pass_dropped_only,
    poisson_recon,
    ramp,
)

N_IN, NT, T, TR = 5, 7, 11, 13
DIMS = dict(ic_enc_dim=3, ci_enc_dim=2, con_dim=4, co_dim=2, ic_dim=3, gen_dim=6, fac_dim=5)


def tiny(**changes) -> LFADS:
    torch.manual_seed(0)
    return LFADS(LfadsConfig(**{**DIMS, **changes}), n_heldin=N_IN, t_obs=T, num_neurons=NT,
                 trial_length=TR)


def test_ramp_values_at_chosen_epochs():
    """Verify that r(start, inc) = clamp((epoch + 1 - start) / (inc + 1), 0, 1)."""
    assert ramp(0, 0, 80) == pytest.approx(1 / 81)
    assert ramp(79, 0, 80) == pytest.approx(80 / 81)
    assert ramp(80, 0, 80) == 1.0 and ramp(500, 0, 80) == 1.0
    assert ramp(5, 10, 4) == 0.0 and ramp(9, 10, 4) == 0.0
    assert ramp(10, 10, 4) == pytest.approx(1 / 5) and ramp(13, 10, 4) == pytest.approx(4 / 5)
    assert ramp(0, 0, 0) == 1.0


def test_poisson_recon_has_the_stirling_term():
    """Verify that the NLL is rate - k log rate + Stirling(k) per element, Stirling only for
    k > 1."""
    log_rates = torch.tensor([0.3, -1.0, 1.2, 0.0], dtype=torch.float64)
    k = torch.tensor([0.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    expected = []
    for lr, kk in zip(log_rates.tolist(), k.tolist()):
        stirling = kk * math.log(kk) - kk + 0.5 * math.log(2 * math.pi * kk) if kk > 1 else 0.0
        expected.append(math.exp(lr) - kk * lr + stirling)
    torch.testing.assert_close(poisson_recon(log_rates, k),
                               torch.tensor(expected, dtype=torch.float64))


def test_kl_ic_is_the_normal_kl_against_a_variance_point_one_prior():
    """Verify that KL(N(m, s^2) || N(0, 0.1)) = 0.5 (log(0.1 / s^2) + (s^2 + m^2) / 0.1 - 1),
    summed over Z and averaged over trials, at a few values."""
    mean = torch.tensor([[0.0, 0.5], [-1.0, 0.2]], dtype=torch.float64)
    std = torch.tensor([[math.sqrt(0.1), 0.2], [1.0, 0.05]], dtype=torch.float64)
    by_hand = lambda m, s: 0.5 * (math.log(0.1 / s**2) + (s**2 + m**2) / 0.1 - 1)  # noqa: E731
    trials = [sum(by_hand(m, s) for m, s in zip(mr, sr))
              for mr, sr in zip(mean.tolist(), std.tolist())]
    got = kl_ic(mean, std, torch.zeros(2, dtype=torch.float64),
                torch.full((2,), math.log(0.1), dtype=torch.float64))
    assert float(got) == pytest.approx(sum(trials) / 2, rel=1e-12)
    assert by_hand(0.0, math.sqrt(0.1)) == pytest.approx(0.0, abs=1e-15)  # same as the prior


def test_ar1_log_prob_of_a_short_sequence():
    """Verify that log p(u) = log N(u0; 0, nvar / (1 - a^2)) + sum_t log N(u_t; a u_{t-1}, nvar),
    a = exp(-1/tau), for one output of three bins, computed with scalars."""
    tau, nvar, u = 10.0, 0.1, [0.3, -0.2, 0.5]
    a = math.exp(-1 / tau)
    logn = lambda x, m, v: -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)  # noqa: E731
    by_hand = logn(u[0], 0.0, nvar / (1 - a**2)) + logn(u[1], a * u[0], nvar) \
        + logn(u[2], a * u[1], nvar)
    seq = torch.tensor(u, dtype=torch.float64).view(1, 3, 1)
    got = ar1_log_prob(seq, torch.tensor([math.log(tau)], dtype=torch.float64),
                       torch.tensor([math.log(nvar)], dtype=torch.float64))
    assert float(got[0]) == pytest.approx(by_hand, rel=1e-12)
    # Two outputs, two trials: independent sums.
    two = torch.cat([seq, -seq], dim=2).repeat(2, 1, 1)
    logs = torch.tensor([math.log(tau)] * 2, dtype=torch.float64)
    lognv = torch.tensor([math.log(nvar)] * 2, dtype=torch.float64)
    torch.testing.assert_close(ar1_log_prob(two, logs, lognv),
                               torch.full((2,), 2 * by_hand, dtype=torch.float64))


def test_kl_co_is_log_q_minus_log_p_of_the_sample():
    """Verify that the one-sample KL is log N(u; mean, std^2) - log p_AR1(u), trial mean."""
    u = torch.tensor([[[0.1], [0.4]], [[-0.3], [0.0]]], dtype=torch.float64)
    mean, std = torch.full_like(u, 0.2), torch.full_like(u, 0.5)
    logtaus = torch.tensor([math.log(4.0)], dtype=torch.float64)
    lognvars = torch.tensor([math.log(0.2)], dtype=torch.float64)
    a = math.exp(-1 / 4)
    logn = lambda x, m, v: -0.5 * (math.log(2 * math.pi * v) + (x - m) ** 2 / v)  # noqa: E731
    kls = []
    for (u0,), (u1,) in u.tolist():
        log_q = logn(u0, 0.2, 0.25) + logn(u1, 0.2, 0.25)
        log_p = logn(u0, 0.0, 0.2 / (1 - a**2)) + logn(u1, a * u0, 0.2)
        kls.append(log_q - log_p)
    got = kl_co(u, mean, std, logtaus, lognvars)
    assert float(got) == pytest.approx(sum(kls) / 2, rel=1e-12)
    x = torch.tensor(0.7, dtype=torch.float64)
    assert float(normal_log_prob(x, x * 0, x * 0 + 2)) == pytest.approx(logn(0.7, 0, 2))


def test_l2_penalty_scales_recurrent_matrices_over_their_size():
    """Verify that L2 = sum(scale * ||W_hh||^2 / 2) / elements, over the matrices with scale > 0."""
    model = tiny()
    cfg = LfadsConfig(**DIMS, l2_gen_scale=0.5, l2_con_scale=2.0)
    gen = model.decoder.rnn.cell.gen_cell.weight_hh.detach()
    con = model.decoder.rnn.cell.con_cell.weight_hh.detach()
    by_hand = (0.5 * 0.5 * gen.pow(2).sum() + 2.0 * 0.5 * con.pow(2).sum()) \
        / (gen.numel() + con.numel())
    torch.testing.assert_close(l2_penalty(model, cfg).detach(), by_hand)
    assert float(l2_penalty(model, LfadsConfig(**DIMS))) == 0.0
    enc = LfadsConfig(**DIMS, l2_ic_enc_scale=1.0)
    fwd = model.encoder.ic_enc.fwd_gru.cell.weight_hh.detach()
    bwd = model.encoder.ic_enc.bwd_gru.cell.weight_hh.detach()
    torch.testing.assert_close(l2_penalty(model, enc).detach(),
                               0.5 * (fwd.pow(2).sum() + bwd.pow(2).sum()) / (2 * fwd.numel()))


def test_coordinated_dropout_hides_and_scales():
    """Verify that hidden elements are 0, kept ones scaled by 1/(1 - cd_rate), and that
    about cd_rate of them are hidden."""
    heldin = torch.full((50, 40, 30), 2.0)
    x, dropped = coordinated_dropout(heldin, 0.3, generator=torch.Generator().manual_seed(0))
    assert (x[dropped] == 0).all()
    torch.testing.assert_close(x[~dropped], torch.full_like(x[~dropped], 2.0 / 0.7))
    assert float(dropped.float().mean()) == pytest.approx(0.3, abs=0.01)


def test_recon_gradient_is_zero_on_kept_heldin_elements():
    """Verify that the loss value is unchanged, the gradient is zero on held-in observed
    elements the model saw, and nonzero on hidden ones, held-out neurons and forward bins."""
    log_rates = torch.randn(3, TR, NT, requires_grad=True)
    target = torch.poisson(torch.full((3, TR, NT), 2.0))
    _, dropped = coordinated_dropout(torch.ones(3, T, N_IN), 0.4,
                                     generator=torch.Generator().manual_seed(1))
    nll = poisson_recon(log_rates, target)
    blocked = pass_dropped_only(nll, dropped)
    torch.testing.assert_close(blocked, nll)
    blocked.mean().backward()
    grad = log_rates.grad
    seen = grad[:, :T, :N_IN]
    assert (seen[~dropped] == 0).all() and (seen[dropped] != 0).all()
    assert (grad[:, :, N_IN:] != 0).all() and (grad[:, T:, :] != 0).all()


def test_lfads_loss_is_the_scaled_sum_of_its_parts_and_trains():
    """Verify that total = loss_scale (recon + r_l2 L2 + r_kl (kl_ic_scale KL_ic + kl_co_scale
    KL_co)), that every trainable tensor gets a gradient, and that eval mode skips
    coordinated dropout (so a fixed generator gives a fixed loss)."""
    cfg = LfadsConfig(**DIMS, kl_ic_scale=1e-2, kl_co_scale=3e-3, l2_gen_scale=0.1,
                      l2_con_scale=0.2, kl_increase_epoch=9, l2_start_epoch=2, loss_scale=10.0)
    model = tiny().train()
    target = torch.poisson(torch.full((4, TR, NT), 1.5))
    heldin = target[:, :T, :N_IN]
    out = lfads_loss(model, heldin, target, epoch=3, cfg=cfg,
                     generator=torch.Generator().manual_seed(0))
    assert out.kl_ramp == pytest.approx(4 / 10) and out.l2_ramp == pytest.approx(2 / 81)
    total = 10.0 * (out.recon + out.l2_ramp * out.l2
                    + out.kl_ramp * (1e-2 * out.kl_ic + 3e-3 * out.kl_co))
    torch.testing.assert_close(out.total, total)
    assert torch.isfinite(out.total) and float(out.kl_ic) > 0
    out.total.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    again = [lfads_loss(model, heldin, target, epoch=3, cfg=cfg,
                        generator=torch.Generator().manual_seed(5)).total for _ in range(2)]
    torch.testing.assert_close(again[0], again[1])


def test_lfads_loss_without_controller_has_no_kl_co():
    """Verify that a model without a controller gets KL_co = 0 and a finite loss."""
    no_con = dict(ci_enc_dim=0, con_dim=0, co_dim=0)
    model = tiny(**no_con)
    target = torch.poisson(torch.full((2, TR, NT), 1.0))
    out = lfads_loss(model, target[:, :T, :N_IN], target, epoch=0,
                     cfg=LfadsConfig(**{**DIMS, **no_con}, kl_co_scale=1.0))
    assert float(out.kl_co) == 0.0 and torch.isfinite(out.total)
