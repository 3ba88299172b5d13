"""STNDT (Le & Shlizerman, NeurIPS 2022): the NDT with attention over neurons in every layer.

Shape legend: B = trials, T = time bins (T_obs + T_fwd), N = neurons (N_in + N_out),
H = HIDDEN_SIZE. Tensors are batch-first here: the temporal stream is (B, T, N), one token
per bin; the spatial stream is (B, N, T), one token per neuron. STNDT's code and the facts
sheet write them time-major (T x B x N, N x B x T); the arithmetic is the same.

Forward pass, in eval mode:
    h = embedder(x) * sqrt(N) + temporal positions           (B, T, N)
    s = spatial_embedder(x^T) * sqrt(T) + spatial positions   (B, N, T)
    per layer: the NDT's layer on h (banded attention over bins, feed-forward); then
        W = head-averaged attention weights of s over neurons (B, N, N), no mask;
        h += W-mix of ts_norm1(h) over neurons; h += tsFFN(ts_norm2(h))   (pre-norm;
        post-norm applies the norms after each residual and W comes from s itself);
        the next layer's s is this layer's output h, transposed (never re-embedded)
    log-rates = src_decoder(final LayerNorm or ScaleNorm of h)    (B, T, N)

The spatial attention's value projection and out_proj exist (STNDT's checkpoints hold them)
but do not affect the output. Parameter and buffer names equal STNDT's, so its released
checkpoints load with `strict=True` (see nlb_ndt.model.checkpoint).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import nn

from nlb_ndt.config.typed import StndtConfig, stndt_config
from nlb_ndt.model.ndt import (
    BandedSelfAttention,
    Dropout,
    Encoder,
    EncoderLayer,
    NDTOutput,
    PositionalEncoding,
    context_mask,
    poisson_loss,
)

logger = logging.getLogger(__name__)

__all__ = ["PROJECTOR_PREFIXES", "STNDT", "ScaleNorm", "SpatioTemporalLayer", "StndtConfig",
           "is_stndt_state", "stndt_config", "stndt_state_dict"]

#: State-dict prefixes of STNDT's contrast projection heads: trained only for the
#: contrastive loss, never used at inference, and not built here (see the loader).
PROJECTOR_PREFIXES = ("projector.", "spatial_projector.")


class ScaleNorm(nn.Module):
    """x * g / max(||x||, eps) over the last axis, with one learned gain g (a 0-d tensor).

    Nguyen & Salazar (2019); g starts at sqrt(d), so a fresh ScaleNorm gives unit-RMS tokens.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.tensor(math.sqrt(d_model)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.scale / x.norm(dim=-1, keepdim=True).clamp_min(self.eps))


class SpatioTemporalLayer(EncoderLayer):
    """The NDT's encoder layer, then STNDT's mixing of neurons by attention over neurons.

    The temporal half (self_attn, linear1/2, norm1/2 and their dropouts) is the NDT's
    layer itself, so its names, arithmetic and fast path are shared.

    Args:
        d_model: N, the temporal tokens' width.
        cfg: the model's settings.
        num_layers: L, for T-Fixup's scaling.
        trial_length: T, the spatial tokens' width.
    """

    def __init__(self, d_model: int, cfg: StndtConfig, *, num_layers: int, trial_length: int):
        super().__init__(d_model, cfg, num_layers=num_layers)
        # Only the weights are used (the plain path), so the fused kernel is never asked.
        self.spatial_self_attn = BandedSelfAttention(trial_length, cfg.num_heads, cfg.dropout,
                                                     fast=False)
        self.spatial_norm1 = nn.LayerNorm(trial_length)
        self.ts_norm1 = nn.LayerNorm(d_model)
        self.ts_norm2 = nn.LayerNorm(d_model)
        self.ts_linear1 = nn.Linear(d_model, cfg.hidden_size)
        self.ts_linear2 = nn.Linear(cfg.hidden_size, d_model)
        self.ts_dropout1 = Dropout(cfg.dropout)  # on the neuron-mixing residual
        self.ts_dropout2 = Dropout(cfg.dropout)  # inside the ts feed-forward block
        self.ts_dropout3 = Dropout(cfg.dropout)  # on the ts feed-forward residual
        if cfg.fixup_init:
            # The ts feed-forward is a residual branch like linear1/linear2, so it gets the
            # same T-Fixup factor the NDT's layer applied to those (init only).
            scale = 0.67 * num_layers ** -0.25
            with torch.no_grad():
                self.ts_linear1.weight.mul_(scale)
                self.ts_linear2.weight.mul_(scale)

    def _ts_feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ts_linear2(self.ts_dropout2(self.activation(self.ts_linear1(x))))

    def forward(self, x: torch.Tensor, spatial: torch.Tensor, mask: torch.Tensor | None
                ) -> torch.Tensor:
        """One layer: x (B, T, N) temporal tokens, spatial (B, N, T) neuron tokens.

        Returns the new temporal tokens (B, T, N).
        """
        x, _ = super().forward(x, mask)
        if self.pre_norm:
            w = self.spatial_self_attn.head_averaged_weights(self.spatial_norm1(spatial))
            # x[b, t, n] += sum_m W[b, n, m] * x'[b, t, m]: (B, T, N) @ (B, N, N)^T
            x = x + self.ts_dropout1(self.ts_norm1(x) @ w.transpose(1, 2))
            x = x + self.ts_dropout3(self._ts_feed_forward(self.ts_norm2(x)))
        else:
            w = self.spatial_self_attn.head_averaged_weights(spatial)
            x = self.ts_norm1(x + self.ts_dropout1(x @ w.transpose(1, 2)))
            x = self.ts_norm2(x + self.ts_dropout3(self._ts_feed_forward(x)))
        return x


class STNDT(nn.Module):
    """Spatiotemporal Neural Data Transformer, with the NDT's interface.

    Args:
        cfg: the model's settings (`stndt_config(cfg.MODEL)`).
        num_neurons: N = N_in + N_out.
        trial_length: T = T_obs + T_fwd (bins); every input must have exactly T bins,
            since the neuron tokens are T wide.
        max_spikes: inputs are clamped to this at inference (STNDT's files store the
            training maximum itself; our trainer passes its own limit).
    """

    def __init__(self, cfg: StndtConfig, *, num_neurons: int, trial_length: int,
                 max_spikes: int):
        super().__init__()
        self.config = cfg
        self.num_neurons = N = int(num_neurons)
        self.trial_length = T = int(trial_length)
        self.max_spikes = int(max_spikes)
        self.d_model = N
        if N % cfg.num_heads or T % cfg.num_heads:
            raise ValueError(f"STNDT needs neurons ({N}) and bins ({T}) both divisible by "
                             f"MODEL.NUM_HEADS={cfg.num_heads}")
        linear = cfg.linear_embedder
        self.embedder = nn.Sequential(nn.Linear(N, N)) if linear else nn.Identity()
        self.spatial_embedder = nn.Sequential(nn.Linear(T, T)) if linear else nn.Identity()
        positions = dict(learnable=cfg.learnable_position, offset=cfg.position_offset)
        self.src_pos_encoder = PositionalEncoding(N, T, **positions)
        self.spatial_pos_encoder = PositionalEncoding(T, N, **positions)
        self.embedding_dropout = Dropout(cfg.dropout_embedding)
        self.transformer_encoder = Encoder(
            N, cfg, layer=functools.partial(SpatioTemporalLayer, trial_length=T),
            norm=ScaleNorm(N) if cfg.scale_norm else None)
        self.rate_dropout = Dropout(cfg.dropout_rates)
        self.src_decoder = nn.Sequential(nn.Linear(N, N))
        self.topk = cfg.loss_topk
        self.register_buffer(
            "attn_mask",
            context_mask(T, cfg.context_forward, cfg.context_backward,
                         full_context=cfg.full_context),
            persistent=False,  # derived from the config; not part of STNDT's state
        )
        self.unrestricted = bool(self.attn_mask.all())  # decided once: no per-step sync
        nn.init.uniform_(self.src_decoder[0].weight, -0.1, 0.1)
        nn.init.zeros_(self.src_decoder[0].bias)

    def _check(self, src: torch.Tensor) -> torch.Tensor:
        if tuple(src.shape[1:]) != (self.trial_length, self.num_neurons):
            raise ValueError(f"STNDT expects (B, {self.trial_length}, {self.num_neurons}) "
                             f"inputs, got {tuple(src.shape)}")
        # Float in the parameters' dtype (a float64 copy of the model runs in float64).
        return src.to(self.src_decoder[0].weight.dtype)

    def input_embedding(self, src: torch.Tensor) -> torch.Tensor:
        """The temporal input embedding embedder(src), flattened per trial: (B, T * N).

        What STNDT's released code contrasts (CONTRAST_LAYER 'embedder'); before the
        sqrt(N) factor and the positions, which are the same for every trial.
        """
        return self.embedder(self._check(src)).flatten(1)

    def forward(self, src: torch.Tensor, labels: torch.Tensor | None = None) -> NDTOutput:
        """Log-rates per bin, and the Poisson loss when labels are given.

        Args:
            src: (B, T, N) spike counts (float or integer).
            labels: (B, T, N) target counts; IGNORE_INDEX where not scored.

        Returns:
            NDTOutput(loss, log_rates); loss is None when labels is None.
        """
        x = self._check(src)
        h = self.src_pos_encoder(self.embedder(x) * math.sqrt(self.num_neurons))
        s = self.spatial_embedder(x.transpose(1, 2)) * math.sqrt(self.trial_length)
        s = self.embedding_dropout(self.spatial_pos_encoder(s))
        h = self.embedding_dropout(h)
        mask = None if self.unrestricted else self.attn_mask
        for layer in self.transformer_encoder.layers:
            h = layer(h, s, mask)
            s = h.transpose(1, 2)  # the next layer's neuron tokens: this output, (B, N, T)
        h = self.transformer_encoder.norm(h)
        log_rates = self.src_decoder(self.rate_dropout(h))
        loss = None if labels is None else poisson_loss(log_rates, labels, topk=self.topk)
        return NDTOutput(loss, log_rates)


def stndt_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An STNDT file's state dict without its contrast projection heads (`PROJECTOR_PREFIXES`:
    trained for the contrastive loss only, never read at inference, not built here)."""
    dropped = sorted(k for k in state if k.startswith(PROJECTOR_PREFIXES))
    if dropped:
        logger.debug("skipping STNDT's contrast projection weights %s", dropped)
    return {k: v for k, v in state.items() if k not in dropped}


def is_stndt_state(state) -> bool:
    """Whether a state dict has STNDT's names (spatial_* modules or src_decoder)."""
    return any(k.startswith(("spatial_", "src_decoder.")) or ".spatial_self_attn." in k
               for k in state)
