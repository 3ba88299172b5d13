"""The NDT's training objective: masked modelling of held-in spikes, with held-out neurons
and forward bins always predicted, and its validation on the whole val split.

Shape legend: B = trials, T_obs / T_fwd observed / forward bins, N_in / N_out neurons.

Training (`loss`): held-in counts are masked BERT-style (nlb_ndt.model.masking); the model
sees masked held-in spikes and zeros elsewhere, and is scored by Poisson NLL on the masked
held-in bins, every held-out neuron and every forward bin.

STNDT's contrastive term (nlb_ndt.training.contrastive) is added when it is switched on.

Validation (`validate`), always in fp32 on the whole val split:
    masked_loss    the same loss with a fixed mask (TRAIN.VAL_MASK_SEED), no spans
    unmasked_loss  held-in reconstruction with nothing masked (held-out and forward not
                   scored; TRAIN.LFVE_LEGACY: the original's variant)
    val_cobps      co-bps of the held-out rates against the val target
"""

from __future__ import annotations

import torch

from nlb_ndt.config.typed import TrainConfig
from nlb_ndt.data.splits import SplitTensors
from nlb_ndt.model.masking import assemble, mask_heldin
from nlb_ndt.model.ndt import IGNORE_INDEX
from nlb_ndt.scoring.metrics import co_bps
from nlb_ndt.training.contrastive import contrast_term


class MaskedModelling:
    """Loss and validation of one run.

    Args:
        train: the TRAIN settings (masking, LFVE_LEGACY, VAL_MASK_SEED).
        max_spikes: the model's clamp limit (and the non-zero mask token's base).
        device: where the model runs (batches are moved there).
    """

    def __init__(self, train: TrainConfig, *, max_spikes: int, device: torch.device):
        self.train = train
        self.max_spikes = max_spikes
        self.device = device

    @property
    def optimizer_settings(self) -> dict[str, float]:
        """The AdamW learning rate, epsilon and weight decay (TRAIN.*)."""
        return {"lr": self.train.lr.init, "eps": self.train.eps,
                "weight_decay": self.train.weight_decay}

    def loss(self, forward_fn, batch: SplitTensors, *, epoch: int,
             generator: torch.Generator, model: torch.nn.Module | None = None) -> torch.Tensor:
        """The training loss of one batch (masking drawn from `generator`), plus STNDT's
        contrastive term when TRAIN.CONTRAST_LAMBDA > 0 (`model` is then the module that
        `forward_fn` runs)."""
        heldin_in, heldin_lab = mask_heldin(batch.heldin, self.train.mask, epoch=epoch,
                                            max_spikes=self.max_spikes, generator=generator)
        inputs, labels = assemble(heldin_in, heldin_lab, batch.heldout, batch.forward)
        loss, _ = forward_fn(inputs.to(self.device, non_blocking=True),
                             labels.to(self.device, non_blocking=True))
        if self.train.contrast.enabled:
            loss = loss + contrast_term(model or forward_fn, batch, self.train.contrast,
                                        self.train.mask, max_spikes=self.max_spikes,
                                        generator=generator, device=self.device)
        return loss

    @torch.no_grad()
    def validate(self, model: torch.nn.Module, val: SplitTensors, heldout_target, *,
                 epoch: int, chunk: int = 512) -> dict[str, float]:
        """masked_loss, unmasked_loss and val_cobps on the whole val split (fp32)."""
        model.eval()
        g = torch.Generator(device=val.heldin.device).manual_seed(self.train.val_mask_seed)
        legacy = "legacy" if self.train.lfve_legacy else False
        sums = {"masked": [0.0, 0], "unmasked": [0.0, 0]}
        heldout_rates = []
        t_obs, n_in = val.heldin.shape[1], val.heldin.shape[2]
        for start in range(0, val.n_trials, chunk):
            batch = val.take(slice(start, start + chunk))
            heldin = batch.heldin.clamp(max=self.max_spikes)
            masked_in, masked_lab = mask_heldin(heldin, self.train.mask, epoch=epoch,
                                                max_spikes=self.max_spikes, generator=g,
                                                allow_span=False)
            for name, (inp, lab) in {
                "masked": assemble(masked_in, masked_lab, batch.heldout, batch.forward),
                "unmasked": assemble(heldin, heldin, batch.heldout, batch.forward,
                                     heldout_labels=legacy),
            }.items():
                inp, lab = inp.to(self.device), lab.to(self.device)
                # Always fp32: snapshot choice, patience and the search objective compare
                # these numbers, and bf16 rounding moves them (1.055578 vs 1.055523).
                loss, log_rates = model(inp, lab)
                count = int((lab != IGNORE_INDEX).sum())
                sums[name][0] += float(loss) * count
                sums[name][1] += count
                if name == "unmasked":
                    heldout_rates.append(torch.exp(log_rates.float()[:, :t_obs, n_in:]).cpu())
        rates = torch.cat(heldout_rates).numpy()
        return {
            "masked_loss": sums["masked"][0] / max(1, sums["masked"][1]),
            "unmasked_loss": sums["unmasked"][0] / max(1, sums["unmasked"][1]),
            "val_cobps": co_bps(rates, heldout_target),
        }
