"""STNDT's contrastive term: two augmented views of each batch, SimCLR's NT-Xent between them.

Shape legend: B = trials, T_obs / T_fwd = observed / forward bins, N_in / N_out = held-in /
held-out neurons, T = T_obs + T_fwd, N = N_in + N_out, D = features per view.

STNDT adds lambda * NT-Xent (TRAIN.CONTRAST_LAMBDA) to the masked-modelling loss, from the
first step. Each view is the batch's held-in spikes through a second masker: the masking of
nlb_ndt.model.masking with TRAIN.CONTRAST_MASK_RATIO as its ratio (its token, random and
zero-mask settings as for the main masker, no spans), so at that fraction of observed bins
the counts are zeroed or altered. Held-out neurons and forward bins are zero, as at
inference. The two views of a trial are a positive pair; the 2B - 2 other views of the
batch are its negatives (Chen et al. 2020).

What is compared (TRAIN.CONTRAST_ON):
    "embedding"  the flattened input embedding of each view, `model.input_embedding`
                 (STNDT's released code, CONTRAST_LAYER 'embedder'). Only a trainable
                 embedder learns from it, so it needs MODEL.LINEAR_EMBEDDER.
    "rates"      the flattened log-rates of each view (what STNDT's paper describes); two
                 extra forward passes per step. Log-rates rather than rates: rates are all
                 positive, so every pair of views would have a positive cosine similarity.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from nlb_ndt.config.typed import ContrastConfig, MaskConfig
from nlb_ndt.data.splits import SplitTensors
from nlb_ndt.model.masking import mask_heldin

#: The values TRAIN.CONTRAST_ON takes.
CONTRAST_TARGETS = ("embedding", "rates")


def contrast_views(heldin: torch.Tensor, mask: MaskConfig, *, ratio: float, max_spikes: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented copies of held-in spikes (B, T_obs, N_in).

    Args:
        heldin: (B, T_obs, N_in) counts.
        mask: the main masker's settings; only its ratio is replaced (by `ratio`).
        ratio: fraction of observed bins altered in each view (TRAIN.CONTRAST_MASK_RATIO).
        max_spikes: the model's clamp limit (the mask token when USE_ZERO_MASK is off).
        generator: source of all randomness.

    Returns:
        (view1, view2), each (B, T_obs, N_in).
    """
    second = dataclasses.replace(mask, ratio=ratio, max_span=1)
    return tuple(mask_heldin(heldin, second, epoch=0, max_spikes=max_spikes,
                             generator=generator, allow_span=False)[0] for _ in range(2))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy of two views, (B, D) each.

    Row i of z1 and row i of z2 are a positive pair. Each of the 2B vectors is scored by the
    cross-entropy of its cosine similarities / temperature to the 2B - 1 others, with its
    pair as the target; the loss is the mean over all 2B. Computed in float32.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"views must both be (B, D), got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    n = z.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    pairs = (torch.arange(n, device=z.device) + n // 2) % n
    return F.cross_entropy(sim, pairs)


def view_features(model: torch.nn.Module, inputs: torch.Tensor, on: str) -> torch.Tensor:
    """(B, D) features of one view's model inputs (B, T, N): see the module docstring."""
    if on == "embedding":
        if not hasattr(model, "input_embedding"):
            raise TypeError(f"{type(model).__name__} has no input_embedding; the contrastive "
                            "loss on the embedding needs STNDT (or TRAIN.CONTRAST_ON rates)")
        return model.input_embedding(inputs)
    if on == "rates":
        return model(inputs)[1].flatten(1)
    raise ValueError(f"TRAIN.CONTRAST_ON must be one of {CONTRAST_TARGETS}, not {on!r}")


def contrastive_loss(model: torch.nn.Module, view1: torch.Tensor, view2: torch.Tensor, *,
                     temperature: float, on: str = "embedding") -> torch.Tensor:
    """NT-Xent between the features of two views' model inputs (B, T, N) each.

    Raises:
        ValueError: on "embedding" while gradients are on, but the embedding has none to
            give (an identity embedder: set MODEL.LINEAR_EMBEDDER, or CONTRAST_ON rates).
    """
    z1, z2 = view_features(model, view1, on), view_features(model, view2, on)
    if on == "embedding" and torch.is_grad_enabled() and not z1.requires_grad:
        raise ValueError("the contrastive loss on the input embedding trains nothing: this "
                         "model's embedder is the identity (set MODEL.LINEAR_EMBEDDER True, "
                         "or TRAIN.CONTRAST_ON rates)")
    return nt_xent(z1, z2, temperature)


def _model_inputs(heldin: torch.Tensor, n_out: int, t_fwd: int) -> torch.Tensor:
    """(B, T, N) inputs: held-in counts, zeros for held-out neurons and forward bins."""
    B, t_obs, n_in = heldin.shape
    inputs = heldin.new_zeros(B, t_obs + t_fwd, n_in + n_out)
    inputs[:, :t_obs, :n_in] = heldin
    return inputs


def contrast_term(model: torch.nn.Module, batch: SplitTensors, contrast: ContrastConfig,
                  mask: MaskConfig, *, max_spikes: int, generator: torch.Generator,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """lambda * NT-Xent of one training batch, ready to add to the masked-modelling loss.

    Args:
        model: an STNDT (or, with CONTRAST_ON rates, any model of the NDT interface).
        batch: the batch's held-in, held-out and forward counts.
        contrast: TRAIN.CONTRAST_* settings (`contrast_config`).
        mask: the main masker's settings (TRAIN.MASK_*).
        max_spikes: the model's clamp limit.
        generator: source of the views' randomness (on the batch's device).
        device: where the model runs (default: the batch's device).
    """
    view1, view2 = contrast_views(batch.heldin, mask, ratio=contrast.mask_ratio,
                                  max_spikes=max_spikes, generator=generator)
    n_out, t_fwd = batch.heldout.shape[-1], batch.forward.shape[1]
    view1, view2 = (_model_inputs(v, n_out, t_fwd).to(device or v.device, non_blocking=True)
                    for v in (view1, view2))
    loss = contrastive_loss(model, view1, view2, temperature=contrast.temperature,
                            on=contrast.on)
    return contrast.weight * loss
