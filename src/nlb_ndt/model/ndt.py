"""The Neural Data Transformer (Ye & Pandarinath 2021) as AESMTE3 configured it.

Shape legend: B = trials, T = time bins (T_obs observed + T_fwd forward-prediction),
N = neurons (N_in held-in + N_out held-out), d = model width (N, or EMBED_DIM * N).

One token per bin. The input at bin t is the vector of N spike counts (held-out neurons
and forward bins are zeroed by the caller), scaled by sqrt(d); learned positions are added;
a stack of pre-norm encoder layers attends within a band of bins (query t sees keys
t - CONTEXT_BACKWARD ... t + CONTEXT_FORWARD); a final LayerNorm, dropout and one linear
layer give log-rates per bin. The loss is Poisson NLL over labelled elements.

Parameter and buffer names equal the original's, so its released checkpoints load with
`strict=True`: pos_encoder.{pe, pos_embedding.weight}, transformer_encoder.layers.{i}.
{self_attn.in_proj_weight, self_attn.in_proj_bias, self_attn.out_proj, linear1, linear2,
norm1, norm2}, transformer_encoder.norm, decoder.0, and embedder.0 when EMBED_DIM > 0.

Three attention paths compute the same function: without dropout the fast one calls
`F.scaled_dot_product_attention` with a boolean band mask; training on the CPU with dropout
it is `cpu_kernels.banded_attention` (query blocks against their key windows only, no
layout copies, a hand-written backward); the plain one is the textbook softmax(QK^T/sqrt(h)
+ mask)V, the reference and the way to inspect attention (`NDT.attention_weights`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nlb_ndt.config.typed import ModelConfig, model_config
from nlb_ndt.model import cpu_kernels
from nlb_ndt.model.cpu_kernels import dropout, residual_dropout

IGNORE_INDEX = -100  # label value of elements that do not enter the loss

__all__ = ["IGNORE_INDEX", "NDT", "BandedSelfAttention", "Dropout", "Encoder", "EncoderLayer",
           "ModelConfig", "NDTOutput", "PositionalEncoding", "context_mask", "dropout",
           "model_config", "poisson_loss"]


class NDTOutput(NamedTuple):
    """What `NDT.forward` returns: unpacks as `loss, log_rates = model(src, labels)`."""

    loss: torch.Tensor | None  # scalar Poisson NLL; None without labels
    log_rates: torch.Tensor  # (B, T, N)


class Dropout(nn.Module):
    """nn.Dropout with the fast CPU path of `cpu_kernels.dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def add(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        """x + self(branch), one fused pass on the CPU (`cpu_kernels.residual_dropout`)."""
        return residual_dropout(x, branch, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def context_mask(trial_length: int, forward: int, backward: int, *,
                 full_context: bool = False) -> torch.Tensor:
    """Boolean (T, T) mask, True where query t may attend key s.

    Allowed: t - backward <= s <= t + forward. As in the original, forward < 0 means
    unlimited forward context and backward <= 0 means unlimited backward context.
    """
    t = torch.arange(trial_length)
    offset = t[None, :] - t[:, None]  # [query, key] = s - t
    allowed = torch.ones(trial_length, trial_length, dtype=torch.bool)
    if full_context:
        return allowed
    if forward >= 0:
        allowed &= offset <= forward
    if backward > 0:
        allowed &= offset >= -backward
    return allowed


class BandedSelfAttention(nn.Module):
    """Multi-head self-attention with the parameter names of nn.MultiheadAttention."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, *, fast: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"model width {d_model} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.fast = fast
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self._blocks, self._blocks_key = None, ()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, d = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3d)
        q, k, v = qkv.view(B, T, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, T, d/h)
        p = self.dropout if self.training else 0.0
        cpu_train = p > 0.0 and x.device.type == "cpu" and not torch.compiler.is_compiling()
        blocks = self._band_blocks(mask, T) if self.fast and cpu_train else None
        if blocks is not None and not return_weights:
            return self.out_proj(cpu_kernels.banded_attention(qkv, h, blocks, p)), None
        weights = None
        # On CPU, fused attention with dropout falls back to an unfused kernel: not used.
        fused_ok = p == 0.0 or x.device.type != "cpu"
        if self.fast and fused_ok and not return_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            weights = self._probabilities(q, k, mask)
            out = weights @ v
        out = out.transpose(1, 2).reshape(B, T, d)
        return self.out_proj(out), weights

    def _band_blocks(self, mask: torch.Tensor | None, length: int):
        """The query blocks of `mask` (cpu_kernels.band_blocks), built once per mask."""
        key = (None if mask is None else (mask.data_ptr(), tuple(mask.shape)), length)
        if self._blocks_key != key:
            rows = cpu_kernels.rows_per_block(mask, length)
            self._blocks, self._blocks_key = cpu_kernels.band_blocks(mask, length, rows), key
        return self._blocks

    def _probabilities(self, q: torch.Tensor, k: torch.Tensor,
                       mask: torch.Tensor | None) -> torch.Tensor:
        """dropout(softmax(QK^T/sqrt(h) + mask)), (B, heads, L, L), as the plain path uses."""
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, L, L)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return dropout(scores.softmax(dim=-1), self.dropout, self.training)

    def head_averaged_weights(self, x: torch.Tensor,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights of `x` (B, L, d) averaged over heads: (B, L, L).

        What nn.MultiheadAttention returns with need_weights (dropout included in
        training). Only the query and key projections are computed: STNDT mixes its
        temporal stream with these weights and never uses this module's values.
        """
        B, L, d = x.shape
        h = self.num_heads
        qk = F.linear(x, self.in_proj_weight[: 2 * d], self.in_proj_bias[: 2 * d])
        q, k = qk.view(B, L, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, L, d/h)
        return self._probabilities(q, k, mask).mean(dim=1)


class EncoderLayer(nn.Module):
    """One transformer encoder layer (pre- or post-norm), named as nn.TransformerEncoderLayer."""

    def __init__(self, d_model: int, cfg, *, num_layers: int):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.self_attn = BandedSelfAttention(d_model, cfg.num_heads, cfg.dropout,
                                             fast=cfg.fast_attention)
        self.linear1 = nn.Linear(d_model, cfg.hidden_size)
        self.linear2 = nn.Linear(cfg.hidden_size, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(cfg.dropout)  # inside the feed-forward block
        self.dropout1 = Dropout(cfg.dropout)  # on the attention residual
        self.dropout2 = Dropout(cfg.dropout)  # on the feed-forward residual
        self.activation = F.relu if cfg.activation == "relu" else F.gelu
        if cfg.fixup_init:
            # T-Fixup (Huang et al. 2020) as the original applied it: scale the residual
            # branches' output weights by 0.67 * L^(-1/4). The original also meant to scale
            # V by sqrt(2) but looked for a parameter name that packed projections never
            # have, so it never happened; we reproduce what actually ran.
            scale = 0.67 * num_layers ** -0.25
            with torch.no_grad():
                for w in (self.linear1.weight, self.linear2.weight,
                          self.self_attn.out_proj.weight):
                    w.mul_(scale)

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            attn, weights = self.self_attn(self.norm1(x), mask, return_weights)
            x = self.dropout1.add(x, attn)
            x = self.dropout2.add(x, self._feed_forward(self.norm2(x)))
        else:
            attn, weights = self.self_attn(x, mask, return_weights)
            x = self.norm1(self.dropout1.add(x, attn))
            x = self.norm2(self.dropout2.add(x, self._feed_forward(x)))
        return x, weights


class Encoder(nn.Module):
    """The layer stack plus the final LayerNorm the original always applied.

    `layer(d_model, cfg, num_layers=L)` builds each layer and `norm` replaces the final
    LayerNorm: STNDT passes its spatiotemporal layer and, with SCALE_NORM, a ScaleNorm.
    """

    def __init__(self, d_model: int, cfg, *, layer=EncoderLayer, norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            layer(d_model, cfg, num_layers=cfg.num_layers) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if norm is None else norm


class PositionalEncoding(nn.Module):
    """Learned (the NLB templates) or sinusoidal positions, added to the tokens.

    Any axis: STNDT also builds one for its neuron tokens (d_model = T, trial_length = N).
    `pe` holds the position indices (learned) or the encodings (sinusoidal), as in the
    original. Learned positions index 0..T-1: the original's +1 offset indexed past the
    end of its table (NDT issue #1), so the offset only applies to sinusoidal positions.
    """

    def __init__(self, d_model: int, trial_length: int, *, learnable: bool, offset: bool):
        super().__init__()
        self.learnable = learnable
        if learnable:
            self.register_buffer("pe", torch.arange(trial_length).unsqueeze(1))  # (T, 1)
            self.pos_embedding = nn.Embedding(trial_length, d_model)
        else:
            position = torch.arange(trial_length, dtype=torch.float).unsqueeze(1) + int(offset)
            freq = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(1e4) / d_model))
            pe = torch.zeros(trial_length, d_model)
            pe[:, 0::2] = torch.sin(position * freq)
            pe[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
            self.register_buffer("pe", pe.unsqueeze(1))  # (T, 1, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        if self.learnable:
            return x + self.pos_embedding(self.pe[:T, 0])  # (T, d) broadcast over B
        return x + self.pe[:T, 0]


class NDT(nn.Module):
    """Neural Data Transformer.

    Args:
        cfg: the model's settings (`model_config(cfg.MODEL)`).
        num_neurons: N = N_in + N_out.
        trial_length: T = T_obs + T_fwd (bins).
        max_spikes: largest count the model expects (training max + 3); inputs are
            clamped to it at inference, and it sizes the per-count embedding.
    """

    def __init__(self, cfg: ModelConfig, *, num_neurons: int, trial_length: int,
                 max_spikes: int):
        super().__init__()
        self.config = cfg
        self.num_neurons = int(num_neurons)
        self.trial_length = int(trial_length)
        self.max_spikes = int(max_spikes)
        self.embed_dim = cfg.embed_dim
        if self.embed_dim > 0:
            # A learned vector per count value (0..max_spikes+1, the last being the
            # original's non-zero mask token), concatenated over neurons.
            self.embedder = nn.Sequential(nn.Embedding(self.max_spikes + 2, self.embed_dim))
            self.d_model = self.embed_dim * self.num_neurons
        else:
            self.embedder = nn.Identity()
            self.d_model = self.num_neurons
        self.scale = math.sqrt(self.d_model)
        self.pos_encoder = PositionalEncoding(
            self.d_model, self.trial_length, learnable=cfg.learnable_position,
            offset=cfg.position_offset)
        self.embedding_dropout = Dropout(cfg.dropout_embedding)
        self.transformer_encoder = Encoder(self.d_model, cfg)
        self.rate_dropout = Dropout(cfg.dropout_rates)
        self.decoder = nn.Sequential(nn.Linear(self.d_model, self.num_neurons))
        self.topk = cfg.loss_topk
        self.register_buffer(
            "attn_mask",
            context_mask(self.trial_length, cfg.context_forward, cfg.context_backward,
                         full_context=cfg.full_context),
            persistent=False,  # derived from the config; not part of the original's state
        )
        # Decided once here: checking the mask per call would synchronise a GPU each step.
        self.unrestricted = bool(self.attn_mask.all())
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.uniform_(self.decoder[0].weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder[0].bias)
        if self.embed_dim > 0:
            nn.init.uniform_(self.embedder[0].weight, -0.1, 0.1)

    def _encode(self, src: torch.Tensor, return_weights: bool
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        B, T, N = src.shape
        if self.embed_dim > 0:
            x = self.embedder(src.long()).reshape(B, T, self.d_model)  # (B, T, k*N)
        else:
            x = src.float()
        x = self.embedding_dropout(self.pos_encoder(x * self.scale))
        mask = None if self.unrestricted else self.attn_mask[:T, :T]
        all_weights = []
        for layer in self.transformer_encoder.layers:
            x, w = layer(x, mask, return_weights)
            all_weights.append(w)
        x = self.transformer_encoder.norm(x)
        return self.decoder(self.rate_dropout(x)), all_weights  # (B, T, N) log-rates

    def forward(self, src: torch.Tensor, labels: torch.Tensor | None = None) -> NDTOutput:
        """Log-rates per bin, and the Poisson loss when labels are given.

        Args:
            src: (B, T, N) spike counts (float or integer).
            labels: (B, T, N) target counts; IGNORE_INDEX where not scored.

        Returns:
            NDTOutput(loss, log_rates); loss is None when labels is None.
        """
        log_rates, _ = self._encode(src, return_weights=False)
        loss = None if labels is None else poisson_loss(log_rates, labels, topk=self.topk)
        return NDTOutput(loss, log_rates)

    def attention_weights(self, src: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's attention weights (B, heads, T, T) for `src`, by the plain path."""
        _, weights = self._encode(src, return_weights=True)
        return weights


def poisson_loss(log_rates: torch.Tensor, labels: torch.Tensor, *,
                 topk: float = 1.0) -> torch.Tensor:
    """Mean Poisson NLL (no Stirling term), exp(r) - y*r, over labelled elements.

    Two dot products with a 0/1 weight: no boolean indexing (a device sync and a copy), no
    `where` or boolean factor (an unvectorised pass, or a float copy, on the CPU).
    """
    log_rates = log_rates.float()  # the loss stays fp32 under bf16 autocast
    labelled = labels != IGNORE_INDEX
    if topk < 1.0:
        nll = torch.exp(log_rates) - torch.where(labelled, labels, 0) * log_rates
        values = nll[labelled]
        k = max(1, int(topk * values.numel()))
        return values.topk(k).values.mean()
    r, w = log_rates.flatten(), labelled.flatten().to(log_rates.dtype)
    y = labels.flatten().to(r.dtype) * w  # IGNORE_INDEX * 0 = 0
    return (torch.dot(w, torch.exp(r)) - torch.dot(y, r)) / w.sum().clamp_min(1)
