"""LFADS's training loss as lfads-torch computes it, in pieces.

Shape legend: B = trials, T = observed bins, Tr = T + forward bins, I = held-in neurons,
Nt = all neurons (held-in first), Z = initial-condition size, U = controller outputs.

    loss = loss_scale * (recon + r_l2 * L2 + r_kl * (kl_ic_scale * KL_ic + kl_co_scale * KL_co))

recon is the Poisson NLL with the Stirling term, mean over every (B, Tr, Nt) element;
KL_ic the analytic KL of the IC posterior from its prior, summed over Z, mean over trials;
KL_co a one-sample estimate of log q - log p of the controller outputs under the AR(1)
prior, summed over Tr x U, mean over trials; L2 the scaled squared norms of the recurrent
matrices over their element count; r_kl and r_l2 the ramps. Coordinated dropout hides a
random part of the held-in input and lets the reconstruction gradient through only those
hidden elements (plus every held-out neuron and forward bin), so the model cannot learn
to copy its input.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from nlb_ndt.config.lfads import LfadsConfig
from nlb_ndt.model.lfads import LFADS, standard_normal

__all__ = ["LfadsLoss", "ar1_log_prob", "coordinated_dropout", "kl_co", "kl_ic",
           "l2_penalty", "lfads_loss", "normal_log_prob", "pass_dropped_only",
           "poisson_recon", "ramp"]

_LOG_2PI = math.log(2.0 * math.pi)


class LfadsLoss(NamedTuple):
    """`lfads_loss`'s total (to backpropagate) and its parts (detached: for logging)."""

    total: torch.Tensor  # scalar
    recon: torch.Tensor  # mean Poisson NLL per element (nats)
    kl_ic: torch.Tensor  # nats per trial, unscaled
    kl_co: torch.Tensor  # nats per trial, unscaled
    l2: torch.Tensor  # unscaled by the ramp
    kl_ramp: float
    l2_ramp: float


def ramp(epoch: int, start: int, increase: int) -> float:
    """lfads-torch's ramp weight at `epoch` (0-based): (epoch + 1 - start) / (increase + 1),
    clamped to [0, 1]."""
    return min(max((epoch + 1 - start) / (increase + 1), 0.0), 1.0)


def poisson_recon(log_rates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise Poisson NLL of counts under exp(log_rates), with the Stirling
    approximation of log(k!) for counts > 1 (torch's poisson_nll_loss, full=True)."""
    return F.poisson_nll_loss(log_rates, target.to(log_rates.dtype), log_input=True,
                              full=True, reduction="none")


def normal_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, var)."""
    return -0.5 * (_LOG_2PI + torch.log(var) + (x - mean) ** 2 / var)


def kl_ic(mean: torch.Tensor, std: torch.Tensor, prior_mean: torch.Tensor,
          prior_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(prior_mean, exp(prior_logvar))), summed over Z, mean over B.

    Args:
        mean, std: (B, Z) posterior.
        prior_mean, prior_logvar: (Z,) prior.
    """
    var, prior_var = std ** 2, torch.exp(prior_logvar)
    kl = 0.5 * (prior_logvar - torch.log(var) + (var + (mean - prior_mean) ** 2) / prior_var
                - 1.0)
    return kl.sum(dim=1).mean()


def ar1_log_prob(u: torch.Tensor, logtaus: torch.Tensor, lognvars: torch.Tensor
                 ) -> torch.Tensor:
    """log p(u) under independent AR(1) processes per output, summed over Tr and U.

    With alpha = exp(-1 / tau) and innovation variance nvar: u_0 ~ N(0, nvar / (1 -
    alpha^2)) (the stationary variance), u_t ~ N(alpha u_{t-1}, nvar) after.

    Args:
        u: (B, Tr, U) sequences.
        logtaus, lognvars: (U,) log time constants (bins) and log innovation variances.

    Returns:
        (B,) log densities.
    """
    alpha, nvar = torch.exp(-1.0 / torch.exp(logtaus)), torch.exp(lognvars)
    first = normal_log_prob(u[:, 0], torch.zeros_like(u[:, 0]), nvar / (1.0 - alpha ** 2))
    rest = normal_log_prob(u[:, 1:], alpha * u[:, :-1], nvar)
    return first.sum(dim=1) + rest.sum(dim=(1, 2))


def kl_co(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
          logtaus: torch.Tensor, lognvars: torch.Tensor) -> torch.Tensor:
    """One-sample KL estimate log q(sample) - log p(sample), summed over Tr x U, mean over
    B, of the controller outputs' posterior N(mean, std^2) (B, Tr, U) from the AR(1) prior."""
    log_q = normal_log_prob(sample, mean, std ** 2).sum(dim=(1, 2))
    return (log_q - ar1_log_prob(sample, logtaus, lognvars)).mean()


def l2_penalty(model: LFADS, cfg: LfadsConfig) -> torch.Tensor:
    """Sum of scale * ||W||^2 / 2 over the recurrent matrices (weight_hh) whose scale is > 0,
    divided by those matrices' total element count (0 when no scale is > 0)."""
    enc, dec = model.encoder, model.decoder.rnn.cell
    terms = [(enc.ic_enc.fwd_gru.cell.weight_hh, cfg.l2_ic_enc_scale),
             (enc.ic_enc.bwd_gru.cell.weight_hh, cfg.l2_ic_enc_scale),
             (dec.gen_cell.weight_hh, cfg.l2_gen_scale)]
    if model.cfg.use_controller:
        terms += [(enc.ci_enc.fwd_gru.cell.weight_hh, cfg.l2_ci_enc_scale),
                  (enc.ci_enc.bwd_gru.cell.weight_hh, cfg.l2_ci_enc_scale),
                  (dec.con_cell.weight_hh, cfg.l2_con_scale)]
    terms = [(w, scale) for w, scale in terms if scale > 0]
    if not terms:
        return model.readout[0].weight.new_zeros(())
    total = sum(scale * 0.5 * w.pow(2).sum() for w, scale in terms)
    return total / sum(w.numel() for w, _ in terms)


def coordinated_dropout(heldin: torch.Tensor, cd_rate: float, *,
                        generator: torch.Generator | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide each held-in count with probability cd_rate and scale the rest by 1/(1-cd_rate).

    Args:
        heldin: (B, T, I) counts.
        cd_rate: the drop probability, in [0, 1).
        generator: the random source of the mask.

    Returns:
        (input (B, T, I) for the model, dropped (B, T, I) bool: True where hidden).
    """
    device = generator.device if generator is not None else heldin.device
    keep = (torch.rand(heldin.shape, generator=generator, device=device) >= cd_rate
            ).to(heldin.device)
    return heldin * keep / (1.0 - cd_rate), ~keep


def pass_dropped_only(nll: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """The elementwise loss (B, Tr, Nt) with its gradient blocked on the held-in observed
    elements the model saw (not `dropped` (B, T, I)); values are unchanged, and held-out
    neurons and forward bins always pass."""
    t_obs, n_heldin = dropped.shape[1:]
    passes = torch.ones(nll.shape, dtype=torch.bool, device=nll.device)
    passes[:, :t_obs, :n_heldin] = dropped
    return torch.where(passes, nll, nll.detach())


def lfads_loss(model: LFADS, heldin: torch.Tensor, recon_target: torch.Tensor, *,
               epoch: int, cfg: LfadsConfig,
               generator: torch.Generator | None = None) -> LfadsLoss:
    """lfads-torch's training (or validation) loss of one batch.

    Coordinated dropout applies only while the model is in training mode with cd_rate > 0
    (lfads-torch's validation augmentation stack is empty); both posteriors are sampled
    in either mode, as lfads-torch's training and validation steps do.

    Args:
        model: the LFADS being trained.
        heldin: (B, T, I) held-in counts (the model's input).
        recon_target: (B, Tr, Nt) counts of every neuron and bin (held-in first).
        epoch: the current epoch (0-based), for the ramps.
        cfg: scales, ramps, cd_rate and loss_scale (usually model.cfg).
        generator: random source of the mask and the posterior samples.

    Returns:
        LfadsLoss(total, recon, kl_ic, kl_co, l2, kl_ramp, l2_ramp).
    """
    dropped = None
    if model.training and cfg.cd_rate > 0:
        heldin, dropped = coordinated_dropout(heldin, cfg.cd_rate, generator=generator)
    out = model(heldin, sample=True, generator=generator)
    nll = poisson_recon(out.log_rates, recon_target)
    if dropped is not None:
        nll = pass_dropped_only(nll, dropped)
    recon = nll.mean()
    k_ic = kl_ic(out.ic_mean, out.ic_std, model.ic_prior.mean, model.ic_prior.logvar)
    if out.co_mean.shape[-1]:
        # The KL's own posterior draw, independent of the one that fed the generator.
        eps = standard_normal(out.co_mean.shape, generator, like=out.co_mean)
        k_co = kl_co(out.co_mean + out.co_std * eps, out.co_mean, out.co_std,
                     model.co_prior.logtaus, model.co_prior.lognvars)
    else:
        k_co = recon.new_zeros(())
    l2 = l2_penalty(model, cfg)
    r_kl = ramp(epoch, cfg.kl_start_epoch, cfg.kl_increase_epoch)
    r_l2 = ramp(epoch, cfg.l2_start_epoch, cfg.l2_increase_epoch)
    total = cfg.loss_scale * (recon + r_l2 * l2
                              + r_kl * (cfg.kl_ic_scale * k_ic + cfg.kl_co_scale * k_co))
    return LfadsLoss(total, recon.detach(), k_ic.detach(), k_co.detach(), l2.detach(), r_kl,
                     r_l2)
