"""BERT-style masking of held-in spikes, and assembly of the model's input and labels.

Shape legend: B = trials, T_obs observed bins, T_fwd forward bins, T = T_obs + T_fwd,
N_in held-in neurons, N_out held-out neurons, N = N_in + N_out.

Only held-in observed bins are ever visible to the model. Held-out neurons and forward
bins are always zero in the input and always scored in the labels (co-smoothing and
forward prediction are learned at every step); held-in bins are scored only where masked.

All randomness comes from an explicit `torch.Generator`, so training is reproducible
and validation can use a fixed mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nlb_ndt.config.typed import MaskConfig
from nlb_ndt.model.ndt import IGNORE_INDEX


def span_probability(epoch: int, *, max_span: int, ramp_start: int, ramp_end: int) -> float:
    """Chance that a batch uses a span wider than 1 bin (ramps 0 -> 1 over epochs)."""
    if max_span <= 1:
        return 0.0
    return min(max((epoch - ramp_start) / max(1, ramp_end - ramp_start), 0.0), 1.0)


def timestep_mask(batch: int, t_obs: int, ratio: float, width: int, *,
                  generator: torch.Generator, device) -> torch.Tensor:
    """(B, T_obs) boolean mask: Bernoulli(ratio) per bin, each hit widened to `width` bins."""
    hits = torch.rand(batch, t_obs, generator=generator, device=device) < ratio
    if width <= 1:
        return hits
    kernel = torch.ones(1, 1, width, device=device)
    widened = F.conv1d(hits.float().unsqueeze(1), kernel, padding=width // 2).squeeze(1)
    return widened[:, :t_obs] > 0  # even widths give T_obs + 1 columns: crop the last


def mask_heldin(spikes: torch.Tensor, mask: MaskConfig, *, epoch: int, max_spikes: int,
                generator: torch.Generator, allow_span: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask held-in counts as the original did (timestep mode).

    Args:
        spikes: (B, T_obs, N_in) held-in counts (float holding whole numbers).
        mask: the masking settings (TRAIN.MASK_* and USE_ZERO_MASK).
        epoch: current epoch, for the span ramp.
        max_spikes: the mask token is max_spikes + 1 when USE_ZERO_MASK is off.
        generator: source of all randomness.
        allow_span: False in validation (no spans, as the original).

    Returns:
        (inputs, labels): inputs with masked entries replaced (mask token / random
        count / kept), labels equal to the true count where masked, IGNORE_INDEX elsewhere.
    """
    if mask.mode != "timestep":
        raise NotImplementedError(f"TRAIN.MASK_MODE {mask.mode!r}: only 'timestep'")
    B, T_obs, _ = spikes.shape
    device = spikes.device
    width = 1
    p_span = span_probability(epoch, max_span=mask.max_span, ramp_start=mask.span_ramp_start,
                              ramp_end=mask.span_ramp_end) if allow_span else 0.0
    # One draw per batch decides on a span, another its width (both on the CPU generator
    # would desynchronise CUDA streams, so draw them on the generator's own device).
    if p_span > 0 and torch.rand((), generator=generator, device=device).item() < p_span:
        width = int(torch.randint(1, mask.max_span + 1, (), generator=generator,
                                  device=device).item())
    masked = timestep_mask(B, T_obs, mask.ratio / width, width,
                           generator=generator, device=device).unsqueeze(-1)  # (B, T_obs, 1)
    labels = torch.where(masked, spikes, IGNORE_INDEX)

    # Per masked element: mask token with p = TOKEN_RATIO; else a random count with
    # p = RANDOM_RATIO; else the true count stays.
    draw = torch.rand(spikes.shape, generator=generator, device=device)
    token_ratio = mask.token_ratio
    use_token = masked & (draw < token_ratio)
    # Reuse the same uniform draw for the second choice: conditional on not taking the
    # token, (draw - token) / (1 - token) is again uniform on [0, 1).
    rest = (draw - token_ratio) / max(1e-12, 1.0 - token_ratio)
    use_random = masked & ~use_token & (rest < mask.random_ratio)
    token = 0.0 if mask.use_zero_mask else float(max_spikes + 1)
    inputs = torch.where(use_token, token, spikes)
    # Random counts in [0, batch max) with the max taken after masking, as the original;
    # at least 1 so an all-zero batch cannot break the draw.
    high = inputs.max().clamp_min(1)
    random_counts = torch.floor(torch.rand(spikes.shape, generator=generator, device=device) * high)
    inputs = torch.where(use_random, random_counts, inputs)
    return inputs, labels


def assemble(heldin_inputs: torch.Tensor, heldin_labels: torch.Tensor,
             heldout: torch.Tensor, forward: torch.Tensor, *,
             heldout_labels: bool | str = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Append zeroed held-out neurons and forward bins to the input, and their labels.

    Args:
        heldin_inputs, heldin_labels: (B, T_obs, N_in).
        heldout: (B, T_obs, N_out) true held-out counts (NaN = unobserved, not scored).
        forward: (B, T_fwd, N) true forward counts (NaN = not scored).
        heldout_labels: True: score held-out and forward counts (training, masked loss);
            False: score neither (the corrected "unmasked" loss); "legacy": the original's
            buggy unmasked loss, which scores zeros for every held-out neuron except the
            first and ignores forward bins.

    Returns:
        (inputs, labels), each (B, T, N).
    """
    B, T_obs, n_in = heldin_inputs.shape
    n_out = heldout.shape[-1]
    t_fwd = forward.shape[1]
    inputs = torch.zeros(B, T_obs + t_fwd, n_in + n_out, dtype=heldin_inputs.dtype,
                         device=heldin_inputs.device)
    inputs[:, :T_obs, :n_in] = heldin_inputs
    labels = torch.full_like(inputs, IGNORE_INDEX)
    labels[:, :T_obs, :n_in] = heldin_labels
    if heldout_labels is True:
        labels[:, :T_obs, n_in:] = torch.nan_to_num(heldout, nan=IGNORE_INDEX)
        labels[:, T_obs:, :] = torch.nan_to_num(forward, nan=IGNORE_INDEX)
    elif heldout_labels == "legacy":
        labels[:, :T_obs, n_in:] = 0.0
        labels[:, :T_obs, n_in] = IGNORE_INDEX
    return inputs, labels
