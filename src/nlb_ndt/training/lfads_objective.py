"""LFADS's training objective inside the common loop, and its validation.

Shape legend: B = trials, T_obs / T_fwd observed / forward bins, N_in / N_out neurons,
Tr = T_obs + T_fwd, Nt = N_in + N_out.

Training (`loss`): the ELBO of nlb_ndt.training.lfads_loss on a batch: the model reads the
held-in counts (B, T_obs, N_in) and reconstructs every neuron at every bin (B, Tr, Nt),
with coordinated dropout, sampled posteriors and the KL and L2 ramps (in epochs).

Validation (`validate`), on the deterministic path (posterior means, no dropout), fills the
three metrics the snapshots are kept by:
    masked_loss    Poisson NLL (with Stirling's term) of every neuron and bin: LFADS's own
                   validation reconstruction loss, unsmoothed (the lve snapshot keeps its
                   lowest, and patience follows it)
    unmasked_loss  the same over the held-in neurons of the observed bins only (lfve)
    val_cobps      co-bps of the held-out rates against the val target (cobps)
"""

from __future__ import annotations

import torch

from nlb_ndt.config.defaults import apply_overrides
from nlb_ndt.config.lfads import LfadsConfig, lfads_config
from nlb_ndt.data.splits import SplitTensors
from nlb_ndt.scoring.metrics import co_bps
from nlb_ndt.training.lfads_loss import lfads_loss, poisson_recon


def with_data_sizes(cfg, dims: dict[str, int]):
    """`cfg` with LFADS.ENCOD_DATA_DIM / ENCOD_SEQ_LEN set from the data, so a snapshot's
    stored config rebuilds its model on its own (frozen, like the input)."""
    cfg = apply_overrides(cfg, {"LFADS.ENCOD_DATA_DIM": dims["n_heldin"],
                                "LFADS.ENCOD_SEQ_LEN": dims["t_obs"]})
    cfg.freeze()
    return cfg


def recon_target(split: SplitTensors) -> torch.Tensor:
    """(B, Tr, Nt) counts of every neuron and bin, held-in first; NaN (not observed) -> 0."""
    observed = torch.cat([split.heldin, split.heldout], dim=-1)
    return torch.nan_to_num(torch.cat([observed, split.forward], dim=1), nan=0.0)


class LfadsObjective:
    """Loss and validation of one LFADS run.

    Args:
        cfg: the LFADS settings (scales, ramps, coordinated dropout, optimizer).
        device: where the model runs (batches are moved there).
    """

    def __init__(self, cfg: LfadsConfig, *, device: torch.device):
        self.cfg = cfg
        self.device = device

    @classmethod
    def from_config(cls, run_cfg, *, device: torch.device) -> "LfadsObjective":
        return cls(lfads_config(run_cfg.LFADS), device=device)

    @property
    def optimizer_settings(self) -> dict[str, float]:
        """LFADS's own AdamW learning rate, epsilon and weight decay (LFADS.*)."""
        return {"lr": self.cfg.lr_init, "eps": self.cfg.lr_adam_epsilon,
                "weight_decay": self.cfg.weight_decay}

    def loss(self, forward_fn, batch: SplitTensors, *, epoch: int, generator: torch.Generator,
             model: torch.nn.Module | None = None) -> torch.Tensor:
        """The ELBO of one batch (scaled by LOSS_SCALE, as lfads-torch trains it)."""
        model = model if model is not None else forward_fn
        heldin = torch.nan_to_num(batch.heldin, nan=0.0).to(self.device, non_blocking=True)
        target = recon_target(batch).to(self.device, non_blocking=True)
        return lfads_loss(model, heldin, target, epoch=epoch, cfg=self.cfg,
                          generator=generator).total

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, val: SplitTensors, heldout_target, *,
                 epoch: int, chunk: int = 512) -> dict[str, float]:
        """masked_loss, unmasked_loss and val_cobps on the whole val split (fp32)."""
        model.eval()
        t_obs, n_in = val.heldin.shape[1], val.heldin.shape[2]
        sums, counts, rates = [0.0, 0.0], [0, 0], []
        for start in range(0, val.n_trials, chunk):
            batch = val.take(slice(start, start + chunk))
            log_rates = model.log_rates_from_heldin(batch.heldin.to(self.device)).float()
            target = recon_target(batch).to(self.device)
            nll = poisson_recon(log_rates, target)
            for i, part in enumerate((nll, nll[:, :t_obs, :n_in])):
                sums[i] += float(part.sum())
                counts[i] += part.numel()
            rates.append(torch.exp(log_rates[:, :t_obs, n_in:]).cpu())
        return {"masked_loss": sums[0] / max(1, counts[0]),
                "unmasked_loss": sums[1] / max(1, counts[1]),
                "val_cobps": co_bps(torch.cat(rates).numpy(), heldout_target)}
