"""LFADS (Pandarinath et al. 2018) as lfads-torch implements it, for NLB.

Shape legend: B = trials, T = observed bins (encod_seq_len), Tr = T + forward bins
(recon_seq_len), I = held-in neurons (encod_data_dim), Nt = held-in + held-out neurons,
E = IC encoder units per direction, C = CI encoder units per direction, K = controller
units, U = controller outputs, Z = initial-condition size, G = generator units, F = factors.

The input is the (B, T, I) held-in counts, raw (no clamp). A bidirectional GRU reads them
into the initial condition's posterior (mean, std) (B, Z); another, when the controller
exists (C, K, U all > 0), gives controller inputs ci_t = [fwd_{t-lag}, bwd_{t+lag}] (B, Tr, 2C),
zero outside the observed bins. From g0 = ic_to_g0(ic) the generator runs Tr bins, fed by
the controller's outputs; the factors are a row-normalised, bias-free map of its state, and
readout.0 maps them to log-rates (B, Tr, Nt). Rates are exp(log-rates), spikes per bin.

Parameter names and shapes equal lfads-torch's (its `model.state_dict()` loads with
strict=True; see `load_lfads_export`): encoder.{ic_enc_h0, ic_enc.{fwd,bwd}_gru.cell.*,
ic_linear, ci_enc_h0, ci_enc.*}, decoder.{con_h0, ic_to_g0, rnn.cell.{gen_cell, fac_linear,
con_cell, co_linear}}, readout.0, ic_prior.{mean, logvar}, co_prior.{logtaus, lognvars}.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nlb_ndt.config.lfads import LfadsConfig
from nlb_ndt.model.lfads_cells import (
    BidirectionalClippedGRU,
    DecoderCell,
    DecoderRNN,
    init_linear,
)
from nlb_ndt.model.ndt import dropout

__all__ = ["EXPORT_FORMAT", "LFADS", "NO_SPIKE_CLAMP", "LfadsOutput", "load_lfads_export",
           "standard_normal"]

#: LFADS reads raw counts, so its max_spikes is this sentinel: inference's clamp to
#: max_spikes never binds (float32 holds it exactly), and checkpoints can store it as an int.
NO_SPIKE_CLAMP = 2**31 - 1
#: The "format" of an exported lfads-torch model dict (see `load_lfads_export`).
EXPORT_FORMAT = "lfads-torch"


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, *,
                    like: torch.Tensor) -> torch.Tensor:
    """N(0, 1) draws of `like`'s dtype and device, from `generator` wherever it lives (a
    CPU generator may drive a CUDA model: the draws are moved)."""
    device = generator.device if generator is not None else like.device
    draws = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    return draws.to(like.device)


class LfadsOutput(NamedTuple):
    """What `LFADS.forward` returns: everything the loss (nlb_ndt.training.lfads_loss) needs."""

    log_rates: torch.Tensor  # (B, Tr, Nt)
    ic_mean: torch.Tensor  # (B, Z)
    ic_std: torch.Tensor  # (B, Z)
    co_mean: torch.Tensor  # (B, Tr, U); U = 0 without a controller
    co_std: torch.Tensor  # (B, Tr, U)
    factors: torch.Tensor  # (B, Tr, F)


class Encoder(nn.Module):
    """The IC encoder and (with a controller) the CI encoder."""

    def __init__(self, cfg: LfadsConfig, *, n_heldin: int, t_obs: int, trial_length: int):
        super().__init__()
        self.cfg, self.t_obs, self.trial_length = cfg, t_obs, trial_length
        E, C = cfg.ic_enc_dim, cfg.ci_enc_dim
        self.ic_enc_h0 = nn.Parameter(torch.zeros(2, 1, E))
        self.ic_enc = BidirectionalClippedGRU(n_heldin, E, cfg.cell_clip)
        self.ic_linear = init_linear(nn.Linear(2 * E, 2 * cfg.ic_dim))
        if cfg.use_controller:
            self.ci_enc_h0 = nn.Parameter(torch.zeros(2, 1, C))
            self.ci_enc = BidirectionalClippedGRU(n_heldin, C, cfg.cell_clip)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, I) input (already dropped out) -> ic_mean (B, Z), ic_std (B, Z),
        ci (B, Tr, 2C) (width 0 without a controller)."""
        cfg, B = self.cfg, x.shape[0]
        S = cfg.ic_enc_seq_len
        h0 = self.ic_enc_h0.expand(2, B, cfg.ic_enc_dim)
        _, _, last = self.ic_enc(x[:, :S] if S else x, h0, outputs=False)  # (B, 2E)
        ic_mean, ic_logvar = self.ic_linear(dropout(last, cfg.dropout_rate, self.training)
                                            ).split(cfg.ic_dim, dim=1)
        ic_std = torch.sqrt(torch.exp(ic_logvar) + cfg.ic_post_var_min)
        if not cfg.use_controller:
            return ic_mean, ic_std, x.new_zeros(B, self.trial_length, 0)
        h0 = self.ci_enc_h0.expand(2, B, cfg.ci_enc_dim)
        fwd, bwd, _ = self.ci_enc(x[:, S:], h0)  # each (B, T - S, C)
        L = cfg.ci_lag
        # ci_t = [fwd_{t-L}, bwd_{t+L}], zero where that bin falls outside the sequence.
        fwd = F.pad(fwd, (0, 0, L, 0))[:, :fwd.shape[1]]
        bwd = F.pad(bwd, (0, 0, 0, L))[:, L:]
        ci = torch.cat([fwd, bwd], dim=2)
        # S leading zero bins (those the IC encoder alone read), zeros on forward bins.
        ci = F.pad(ci, (0, 0, S, self.trial_length - self.t_obs))
        return ic_mean, ic_std, ci


class Decoder(nn.Module):
    """The generator's start (ic_to_g0), the controller's start (con_h0) and the loop."""

    def __init__(self, cfg: LfadsConfig):
        super().__init__()
        self.con_h0 = nn.Parameter(torch.zeros(1, cfg.con_dim))
        self.ic_to_g0 = init_linear(nn.Linear(cfg.ic_dim, cfg.gen_dim))
        cell = DecoderCell(ci_width=2 * cfg.ci_enc_dim, con_dim=cfg.con_dim,
                           co_dim=cfg.co_dim, gen_dim=cfg.gen_dim, fac_dim=cfg.fac_dim,
                           clip=cfg.cell_clip, controller=cfg.use_controller)
        self.rnn = DecoderRNN(cell, cfg.dropout_rate)

    def forward(self, ic: torch.Tensor, ci: torch.Tensor, noise: torch.Tensor | None
                ) -> dict[str, torch.Tensor]:
        """ic (B, Z), ci (B, Tr, 2C), noise (B, Tr, U) or None -> see DecoderRNN.forward."""
        c0 = self.con_h0.expand(ic.shape[0], self.con_h0.shape[1])
        return self.rnn(self.ic_to_g0(ic), c0, ci, noise)


class IcPrior(nn.Module):
    """Diagonal normal prior of the initial condition: learned mean, frozen variance."""

    def __init__(self, dim: int, var: float):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(dim))
        self.logvar = nn.Parameter(torch.full((dim,), math.log(var)), requires_grad=False)


class CoPrior(nn.Module):
    """AR(1) prior of each controller output: learned log time constant and log noise
    variance per output (time constants in bins)."""

    def __init__(self, dim: int, tau: float, nvar: float):
        super().__init__()
        self.logtaus = nn.Parameter(torch.full((dim,), math.log(tau)))
        self.lognvars = nn.Parameter(torch.full((dim,), math.log(nvar)))


class LFADS(nn.Module):
    """LFADS with lfads-torch's arithmetic, init and parameter names.

    Args:
        cfg: the hyperparameters (dimensions, clip, dropout, priors, ...).
        n_heldin: I, the held-in neurons the model reads.
        t_obs: T, the observed bins the model reads.
        num_neurons: Nt = held-in + held-out neurons it predicts (held-in first).
        trial_length: Tr = T + forward bins it predicts.

    Attributes:
        num_neurons, trial_length: Nt and Tr (the family interface).
        max_spikes: NO_SPIKE_CLAMP: LFADS reads raw counts, nothing is clamped.
        n_heldin, t_obs: I and T.
    """

    def __init__(self, cfg: LfadsConfig, *, n_heldin: int, t_obs: int, num_neurons: int,
                 trial_length: int):
        super().__init__()
        if not (0 < n_heldin <= num_neurons and 0 < t_obs <= trial_length):
            raise ValueError(f"LFADS needs 0 < I={n_heldin} <= Nt={num_neurons} and "
                             f"0 < T={t_obs} <= Tr={trial_length}")
        if cfg.ic_enc_seq_len >= t_obs or (cfg.use_controller and cfg.ci_lag >= t_obs):
            raise ValueError(f"LFADS.IC_ENC_SEQ_LEN ({cfg.ic_enc_seq_len}) and CI_LAG "
                             f"({cfg.ci_lag}) must be below the {t_obs} observed bins")
        self.cfg = cfg
        self.num_neurons, self.trial_length = int(num_neurons), int(trial_length)
        self.n_heldin, self.t_obs = int(n_heldin), int(t_obs)
        self.max_spikes = NO_SPIKE_CLAMP
        self.encoder = Encoder(cfg, n_heldin=n_heldin, t_obs=t_obs, trial_length=trial_length)
        self.decoder = Decoder(cfg)
        self.readout = nn.ModuleList([init_linear(nn.Linear(cfg.fac_dim, num_neurons))])
        self.ic_prior = IcPrior(cfg.ic_dim, cfg.ic_prior_var)
        self.co_prior = CoPrior(cfg.co_dim, cfg.co_prior_tau, cfg.co_prior_nvar)

    def _check_input(self, heldin: torch.Tensor) -> torch.Tensor:
        if heldin.ndim != 3 or tuple(heldin.shape[1:]) != (self.t_obs, self.n_heldin):
            raise ValueError(f"LFADS reads held-in counts of shape (B, {self.t_obs}, "
                             f"{self.n_heldin}), got {tuple(heldin.shape)}")
        return heldin.to(self.readout[0].weight.dtype)

    def forward(self, heldin: torch.Tensor, *, sample: bool = False,
                generator: torch.Generator | None = None) -> LfadsOutput:
        """One pass: held-in counts (B, T, I) -> LfadsOutput (log-rates (B, Tr, Nt), ...).

        Args:
            heldin: raw held-in counts (any real dtype).
            sample: draw the IC and the controller outputs from their posteriors
                (training); False uses the posterior means (lfads-torch's
                `sample_posteriors=False`).
            generator: the random source of those draws (dropout uses torch's global one).
        """
        x = dropout(self._check_input(heldin), self.cfg.dropout_rate, self.training)
        ic_mean, ic_std, ci = self.encoder(x)
        ic, noise = ic_mean, None
        if sample:
            ic = ic_mean + ic_std * standard_normal(ic_mean.shape, generator, like=x)
            noise = standard_normal((x.shape[0], self.trial_length, self.cfg.co_dim),
                                    generator, like=x)
        out = self.decoder(ic, ci, noise)
        log_rates = self.readout[0](out["factors"])
        return LfadsOutput(log_rates, ic_mean, ic_std, out["co_mean"], out["co_std"],
                           out["factors"])

    def log_rates_from_heldin(self, heldin: torch.Tensor) -> torch.Tensor:
        """Deterministic log-rates (B, Tr, Nt) of held-in counts (B, T, I): posterior means,
        no dropout (the module is put in eval mode for the call and restored after)."""
        modes = [(m, m.training) for m in self.modules()]
        try:
            self.eval()
            return self.forward(heldin, sample=False).log_rates
        finally:
            for module, training in modes:
                module.training = training


def _config_from_hparams(hparams: Mapping[str, Any]) -> LfadsConfig:
    """An LfadsConfig from lfads-torch hyperparameter names (unknown names are ignored)."""
    values: dict[str, Any] = {}
    for name, default in LfadsConfig.__dataclass_fields__.items():
        if name in hparams:
            value = hparams[name]
            value = value.item() if hasattr(value, "item") else value
            values[name] = type(default.default)(value)
    return LfadsConfig(**values)


def load_lfads_export(data: Mapping[str, Any]) -> LFADS:
    """Build our LFADS from an exported lfads-torch model and load its weights strictly.

    Args:
        data: {"format": "lfads-torch", "state_dict": model.state_dict() of an lfads-torch
            LFADS, "hparams": {its hyperparameters by lfads-torch's names: encod_data_dim,
            encod_seq_len, recon_seq_len, ic_enc_dim, ci_enc_dim, con_dim, co_dim, ic_dim,
            gen_dim, fac_dim, ci_lag, cell_clip, ... (others optional)}}; plain types only,
            so a file of it loads with torch.load(weights_only=True). Nt comes from
            readout.0.weight.

    Returns:
        The model, in eval mode, on the CPU unless the tensors were elsewhere.

    Raises:
        ValueError: not that format, a missing hyperparameter, an option we do not build
            (external inputs, a read-in layer), or weights that do not fit.
    """
    if data.get("format") != EXPORT_FORMAT or "state_dict" not in data:
        raise ValueError(f"not an exported lfads-torch model (format {data.get('format')!r}; "
                         f"expected {EXPORT_FORMAT!r} with a state_dict)")
    hparams, state = dict(data.get("hparams") or {}), data["state_dict"]
    need = ("encod_data_dim", "encod_seq_len", "recon_seq_len", "ic_enc_dim", "ci_enc_dim",
            "con_dim", "co_dim", "ic_dim", "gen_dim", "fac_dim", "ci_lag", "cell_clip")
    missing = [name for name in need if name not in hparams]
    if missing:
        raise ValueError(f"the lfads-torch export lacks hyperparameters {missing}")
    if int(hparams.get("ext_input_dim", 0)):
        raise ValueError("ext_input_dim > 0: external inputs are not supported (NLB has none)")
    if any(key.startswith("readin") for key in state) or "readout.0.weight" not in state:
        raise ValueError("only an identity read-in and one linear readout.0 are supported")
    try:
        cfg = _config_from_hparams(hparams)
        model = LFADS(cfg, n_heldin=int(hparams["encod_data_dim"]),
                      t_obs=int(hparams["encod_seq_len"]),
                      num_neurons=int(state["readout.0.weight"].shape[0]),
                      trial_length=int(hparams["recon_seq_len"]))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"the lfads-torch weights do not fit its hyperparameters: {exc}"
                         ) from None
    return model.to(state["readout.0.weight"].device).eval()
