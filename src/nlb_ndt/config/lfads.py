"""LFADS's settings (MODEL.FAMILY "lfads"): the LFADS keys, their typed view, and
lfads-torch's per-dataset NLB settings.

Every LFADS key is a field of `LfadsConfig` upper-cased (LFADS.IC_ENC_DIM is
`ic_enc_dim`); the field comments give each key's meaning and unit, and
nlb_ndt.config.defaults builds its LFADS section from `lfads_defaults()`. Field names are
lfads-torch's hyperparameter names, so an exported lfads-torch model's hyperparameters map
onto them one to one. Counters are in epochs, sequence lengths and lags in bins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

__all__ = ["LfadsConfig", "NLB_LFADS_SETTINGS", "lfads_config", "lfads_defaults"]


@dataclass(frozen=True)
class LfadsConfig:
    """What LFADS (MODEL.FAMILY "lfads") is built and trained from: the LFADS keys, each a
    field name upper-cased (LFADS.IC_ENC_DIM). Names follow lfads-torch's hyperparameters;
    the defaults are its mc_maze_small settings (5 ms bins). Counters are in epochs."""

    encod_data_dim: int = 0  # I: held-in neurons the encoders read; 0: the dataset's
    encod_seq_len: int = 0  # T: observed bins the encoders read; 0: the dataset's at BIN_MS
    ic_enc_seq_len: int = 0  # bins only the IC encoder reads (first S); 0: both read all T
    ic_enc_dim: int = 100  # E: units per direction of the initial-condition encoder GRU
    ci_enc_dim: int = 80  # C: units per direction of the controller-input encoder GRU
    ci_lag: int = 1  # bins the controller input lags (fwd half) / leads (bwd half) the data
    con_dim: int = 80  # K: controller GRU units (the controller needs C, K and U all > 0)
    co_dim: int = 4  # U: controller outputs (inferred inputs) per bin
    ic_dim: int = 100  # Z: initial-condition latent size
    gen_dim: int = 100  # G: generator GRU units
    fac_dim: int = 40  # F: latent factors per bin
    cell_clip: float = 5.0  # every GRU state is clamped to +-CELL_CLIP after each step
    dropout_rate: float = 0.02  # dropout probability (input, IC states, g0, con input, factors)
    cd_rate: float = 0.3  # coordinated dropout: probability that a held-in input count is hidden
    ic_post_var_min: float = 1e-4  # floor added to the IC posterior variance
    ic_prior_var: float = 0.1  # IC prior variance (frozen); the prior mean starts at 0, learned
    co_prior_tau: float = 10.0  # AR(1) controller-output prior: initial time constant, in bins
    co_prior_nvar: float = 0.1  # AR(1) prior: initial innovation variance (learned, as tau)
    loss_scale: float = 1e4  # the whole loss is multiplied by this (unitless)
    kl_start_epoch: int = 0  # epoch at which the KL ramp starts rising from 0
    kl_increase_epoch: int = 80  # epochs the KL ramp takes to reach 1
    kl_ic_scale: float = 0.0  # weight of KL(IC posterior || prior), nats per trial
    kl_co_scale: float = 0.0  # weight of KL(controller outputs || AR(1) prior), nats per trial
    l2_start_epoch: int = 0  # epoch at which the L2 (and weight-decay) ramp starts
    l2_increase_epoch: int = 80  # epochs the L2 ramp takes to reach 1
    l2_ic_enc_scale: float = 0.0  # L2 weight on the IC encoder's recurrent matrices
    l2_ci_enc_scale: float = 0.0  # L2 weight on the CI encoder's recurrent matrices
    l2_gen_scale: float = 0.0  # L2 weight on the generator's recurrent matrix
    l2_con_scale: float = 0.0  # L2 weight on the controller's recurrent matrix
    lr_init: float = 4e-3  # AdamW learning rate at the start
    lr_adam_beta1: float = 0.9  # AdamW beta1
    lr_adam_beta2: float = 0.999  # AdamW beta2
    lr_adam_epsilon: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.0  # AdamW weight decay, multiplied by the L2 ramp
    lr_scheduler: bool = False  # ReduceLROnPlateau on the smoothed valid recon loss
    lr_decay: float = 0.95  # that scheduler's factor
    lr_patience: int = 6  # that scheduler's patience, in epochs
    lr_min: float = 1e-5  # that scheduler's floor

    def __post_init__(self):
        for f in fields(self):
            if f.name.endswith(("_dim", "_len", "_epoch", "_lag")) and getattr(self, f.name) < 0:
                raise ValueError(f"LFADS.{f.name.upper()} must be >= 0, not "
                                 f"{getattr(self, f.name)}")
        for name in ("dropout_rate", "cd_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"LFADS.{name.upper()} must be in [0, 1), not "
                                 f"{getattr(self, name)}")
        if self.cell_clip <= 0 or self.ic_prior_var <= 0 or self.co_prior_tau <= 0 \
                or self.co_prior_nvar <= 0:
            raise ValueError("LFADS.CELL_CLIP, IC_PRIOR_VAR, CO_PRIOR_TAU and CO_PRIOR_NVAR "
                             "must be > 0")
        if self.co_dim and not self.use_controller:
            raise ValueError("LFADS.CO_DIM must be 0 without a controller (CI_ENC_DIM or "
                             "CON_DIM is 0): the generator would get no inputs of that width")

    @property
    def use_controller(self) -> bool:
        """The controller (and the CI encoder) exist only when C, K and U are all > 0."""
        return self.ci_enc_dim > 0 and self.con_dim > 0 and self.co_dim > 0


def lfads_defaults() -> dict[str, Any]:
    """{KEY: default} of every LfadsConfig field: the LFADS section of the yacs defaults."""
    return {f.name.upper(): f.default for f in fields(LfadsConfig)}


def lfads_config(node) -> LfadsConfig:
    """The LfadsConfig of an LFADS node (each key cast to its field's type)."""
    values = {}
    for f in fields(LfadsConfig):
        value, kind = node[f.name.upper()], type(f.default)
        if kind is not bool and isinstance(value, bool):
            raise ValueError(f"LFADS.{f.name.upper()} must be a number, not {value!r}")
        values[f.name] = kind(value)
    return LfadsConfig(**values)


def _nlb(dims: tuple[int, ...], dropout: float, lr: float, eps: float, scheduler: bool,
         kl: tuple[float, float], l2: tuple[float, float], batch: int,
         bin_ms: int = 5) -> dict[str, Any]:
    names = ("ic_enc_dim", "ci_enc_dim", "con_dim", "co_dim", "ic_dim", "gen_dim", "fac_dim")
    return {**dict(zip(names, dims)), "dropout_rate": dropout, "lr_init": lr,
            "lr_adam_epsilon": eps, "lr_scheduler": scheduler, "kl_ic_scale": kl[0],
            "kl_co_scale": kl[1], "l2_gen_scale": l2[0], "l2_con_scale": l2[1],
            "batch_size": batch, "bin_ms": bin_ms}


_WIDE = (100, 80, 80, 4, 100, 100, 40)  # E, C, K, U, Z, G, F of the 5 ms datasets
#: lfads-torch's NLB settings (its configs/model/nlb_*.yaml and datamodule batch sizes):
#: LfadsConfig field values per dataset, plus the bin width (ms) and the batch size
#: (trials) they train with. What all share (CI_LAG 1, CELL_CLIP 5, CD_RATE 0.3,
#: IC_POST_VAR_MIN 1e-4, LOSS_SCALE 1e4, priors, ramps over 80 epochs) is the default.
#: KL / L2 scales are the files' values; AutoLFADS's search samples them instead.
NLB_LFADS_SETTINGS: dict[str, dict[str, Any]] = {
    "mc_maze": _nlb((64, 64, 64, 4, 64, 200, 100), 0.3, 4e-3, 1e-8, False, (1e-7, 1e-7),
                    (0.0, 0.0), 256, bin_ms=20),
    "mc_rtt": _nlb(_WIDE, 0.02, 1e-2, 1e-7, True, (0.0, 0.0), (0.0, 0.0), 256),
    "area2_bump": _nlb(_WIDE, 0.02, 4e-3, 1e-7, True, (0.0, 0.0), (0.0, 0.0), 256),
    "dmfc_rsg": _nlb((100, 64, 64, 4, 100, 100, 40), 0.15, 5e-3, 3.16e-7, False,
                     (3e-7, 3e-7), (3e-3, 1e-4), 256),
    "mc_maze_large": _nlb(_WIDE, 0.02, 4e-3, 1e-8, False, (0.0, 0.0), (0.0, 0.0), 256),
    "mc_maze_medium": _nlb(_WIDE, 0.02, 4e-3, 1e-8, False, (0.0, 0.0), (0.0, 0.0), 128),
    "mc_maze_small": _nlb(_WIDE, 0.02, 4e-3, 1e-8, False, (0.0, 0.0), (0.0, 0.0), 64),
}
