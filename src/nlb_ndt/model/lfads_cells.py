"""The recurrent pieces of LFADS with lfads-torch's arithmetic and parameter names.

Shape legend: B = trials, T = bins of a sequence, D = input width, H = cell state width,
G = generator units, F = factors, K = controller units, C = CI encoder units per direction,
U = controller outputs.

`ClippedGRUCell` is not torch's GRU: its 3H stacked rows are (update z, reset r, candidate n)
where torch reads (r, z, n), the reset gate multiplies h *before* the recurrent matmul of the
candidate (torch multiplies after it, bias included), and every new state is clamped to
+-clip. Loading lfads-torch weights into nn.GRU / nn.GRUCell silently computes something
else, so all LFADS cells are this one.

Speed: a cell's input projection x W_ih^T + b_ih does not depend on the state, so it is
computed for a whole sequence in one matmul (`input_projection`) and the loop does only
the recurrent part (`recur`). This is the same arithmetic as projecting step by step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nlb_ndt.model.ndt import dropout

__all__ = ["BidirectionalClippedGRU", "ClippedGRU", "ClippedGRUCell", "DecoderCell",
           "DecoderRNN", "NormalizedLinear", "init_linear"]


def init_linear(layer: nn.Linear) -> nn.Linear:
    """lfads-torch's FanInLinear init: weight ~ N(0, 1/in_features), bias 0."""
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(max(layer.in_features, 1)))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class ClippedGRUCell(nn.Module):
    """One GRU step with lfads-torch's gate order, reset placement and state clipping.

    Args:
        input_size: D.
        hidden_size: H.
        clip: states are clamped to [-clip, clip] after every step.
        encoder: init both matrices with std 1/sqrt(D + H) (the encoders' rule); otherwise
            weight_ih with 1/sqrt(D) and weight_hh with 1/sqrt(H) (controller, generator).
    """

    def __init__(self, input_size: int, hidden_size: int, clip: float, *, encoder: bool):
        super().__init__()
        self.input_size, self.hidden_size, self.clip = input_size, hidden_size, float(clip)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * H, H))
        self.bias_ih = nn.Parameter(torch.zeros(3 * H))
        # Zero and frozen in lfads-torch, but stored and used: loaded weights may set it.
        self.bias_hh = nn.Parameter(torch.zeros(3 * H), requires_grad=False)
        fan_ih, fan_hh = (input_size + H, input_size + H) if encoder else (input_size, H)
        for weight, fan in ((self.weight_ih, fan_ih), (self.weight_hh, fan_hh)):
            if weight.numel():  # a generator without inputs has a (3G, 0) weight_ih
                nn.init.normal_(weight, std=1.0 / math.sqrt(fan))
        with torch.no_grad():
            self.bias_ih[:2 * H] = 1.0  # gates start leaning to keep (z) and use (r) the state

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """x W_ih^T + b_ih for any leading shape: (..., D) -> (..., 3H)."""
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrent_weights(self) -> tuple[torch.Tensor, ...]:
        """(W_zr, b_zr, W_n, b_n): weight_hh and bias_hh split into the gate rows and the
        candidate rows. Sliced once per sequence: slicing every step would make autograd
        scatter a full-size gradient per step."""
        H2 = 2 * self.hidden_size
        w, b = self.weight_hh, self.bias_hh
        return w[:H2], b[:H2], w[H2:], b[H2:]

    def recur(self, gi: torch.Tensor, h: torch.Tensor,
              weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """The step from a precomputed input projection gi (B, 3H) and state h (B, H);
        `weights` is `recurrent_weights()` when the caller has it already."""
        H = self.hidden_size
        w_zr, b_zr, w_n, b_n = weights if weights is not None else self.recurrent_weights()
        gi_zr, gi_n = gi.split([2 * H, H], dim=1)
        z, r = torch.sigmoid(gi_zr + F.linear(h, w_zr, b_zr)).split(H, dim=1)
        n = torch.tanh(gi_n + F.linear(r * h, w_n, b_n))
        return (z * h + (1.0 - z) * n).clamp(-self.clip, self.clip)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """(B, D) input, (B, H) state -> (B, H) new state."""
        return self.recur(self.input_projection(x), h)


class ClippedGRU(nn.Module):
    """A ClippedGRUCell run over a sequence (lfads-torch's `*_gru.cell` naming)."""

    def __init__(self, input_size: int, hidden_size: int, clip: float, *, encoder: bool):
        super().__init__()
        self.cell = ClippedGRUCell(input_size, hidden_size, clip, encoder=encoder)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, *, outputs: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(B, T, D) inputs from state h0 (B, H) -> ((B, T, H) states or None, (B, H) last)."""
        # (B, 3H) per bin from one matmul; unbind (not gi[:, t]) so that the backward pass
        # stacks the per-bin gradients once instead of scattering each into a full copy.
        steps = self.cell.input_projection(x).unbind(1)
        weights = self.cell.recurrent_weights()
        h, states = h0, []
        for gi in steps:
            h = self.cell.recur(gi, h, weights)
            if outputs:
                states.append(h)
        return (torch.stack(states, dim=1) if outputs and states else None), h


class BidirectionalClippedGRU(nn.Module):
    """Two ClippedGRUs, one over the sequence and one over its time reversal."""

    def __init__(self, input_size: int, hidden_size: int, clip: float):
        super().__init__()
        self.fwd_gru = ClippedGRU(input_size, hidden_size, clip, encoder=True)
        self.bwd_gru = ClippedGRU(input_size, hidden_size, clip, encoder=True)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, *, outputs: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(B, T, D) inputs, h0 (2, B, H) ([0] fwd, [1] bwd) -> (fwd states (B, T, H),
        bwd states (B, T, H) in forward time order (bwd[:, t] has seen bins t..T-1),
        final states (B, 2H) = [fwd after bin T-1, bwd after bin 0]); the state
        sequences are None when `outputs` is False."""
        out_f, last_f = self.fwd_gru(x, h0[0], outputs=outputs)
        out_b, last_b = self.bwd_gru(x.flip(1), h0[1], outputs=outputs)
        if out_b is not None:
            out_b = out_b.flip(1)
        return out_f, out_b, torch.cat([last_f, last_b], dim=1)


class NormalizedLinear(nn.Linear):
    """A bias-free linear map whose weight rows are scaled to unit L2 norm at every use."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)
        init_linear(self)

    def normalized_weight(self) -> torch.Tensor:
        """(out, in) weight, each row divided by its norm (eps 1e-12, as F.normalize)."""
        return F.normalize(self.weight, p=2.0, dim=1, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class DecoderCell(nn.Module):
    """The per-bin decoder: controller (optional), generator and factor read-out.

    Registered in lfads-torch's order: gen_cell, fac_linear, then con_cell and co_linear
    when the controller exists. gen_cell's input is the U controller outputs (no external
    inputs: NLB has none).
    """

    def __init__(self, *, ci_width: int, con_dim: int, co_dim: int, gen_dim: int,
                 fac_dim: int, clip: float, controller: bool):
        super().__init__()
        self.controller, self.co_dim, self.ci_width = controller, co_dim, ci_width
        self.gen_cell = ClippedGRUCell(co_dim, gen_dim, clip, encoder=False)
        self.fac_linear = NormalizedLinear(gen_dim, fac_dim)
        if controller:
            self.con_cell = ClippedGRUCell(ci_width + fac_dim, con_dim, clip, encoder=False)
            self.co_linear = init_linear(nn.Linear(con_dim, 2 * co_dim))


class DecoderRNN(nn.Module):
    """The decoder loop over Tr bins (lfads-torch's `decoder.rnn.cell` naming)."""

    def __init__(self, cell: DecoderCell, dropout_rate: float):
        super().__init__()
        self.cell, self.dropout_rate = cell, float(dropout_rate)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.dropout_rate, self.training)

    def forward(self, g0: torch.Tensor, c0: torch.Tensor, ci: torch.Tensor,
                noise: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Run the generator (and controller) from g0 for Tr bins.

        Args:
            g0: (B, G) initial generator state (not clipped).
            c0: (B, K) initial controller state.
            ci: (B, Tr, 2C) controller inputs (zeros on forward bins); unused without one.
            noise: (B, Tr, U) standard normal draws to sample the controller outputs
                (co = mean + std * noise), or None for the posterior means.

        Returns:
            {factors (B, Tr, F), co_mean, co_std, co (B, Tr, U): the generator's inputs}.
        """
        cell, B, Tr = self.cell, g0.shape[0], ci.shape[1]
        gen, w_fac = cell.gen_cell, cell.fac_linear.normalized_weight()  # once per pass
        gen_weights = gen.recurrent_weights()
        f = F.linear(self._drop(g0), w_fac)  # f0 from the dropped g0; g0 itself carries on
        g, c, u = g0, c0, g0.new_zeros(B, 0)
        if cell.controller:
            con_in, w_f, con_weights = self._controller_inputs(ci, noise)
        factors, co = [], []
        for t in range(Tr):
            if cell.controller:
                ci_t, eps = con_in[t]
                c = cell.con_cell.recur(ci_t + F.linear(self._drop(f), w_f), c, con_weights)
                mean, logvar = cell.co_linear(c).split(cell.co_dim, dim=1)
                std = torch.exp(0.5 * logvar)
                u = mean if eps is None else mean + std * eps
                co.append((mean, std, u))
            g = gen.recur(gen.input_projection(u), g, gen_weights)
            f = F.linear(self._drop(g), w_fac)
            factors.append(f)
        out = {"factors": torch.stack(factors, dim=1)}
        for i, name in enumerate(("co_mean", "co_std", "co")):
            out[name] = (torch.stack([step[i] for step in co], dim=1) if co
                         else g0.new_zeros(B, Tr, 0))
        return out

    def _controller_inputs(self, ci: torch.Tensor, noise: torch.Tensor | None
                           ) -> tuple[list, torch.Tensor, tuple[torch.Tensor, ...]]:
        """What the controller's steps need that does not depend on its state: per bin
        (projected ci part of the input, noise or None); the factor part of weight_ih; the
        recurrent weights.

        The controller input is [ci_t, f_prev]. Its ci part is projected for all bins in
        one matmul, with its dropout drawn at once (draws are independent per element
        either way); unbind lets the backward pass stack the per-bin gradients once.
        """
        con = self.cell.con_cell
        w_ci, w_f = con.weight_ih.split([self.cell.ci_width, con.input_size - self.cell.ci_width],
                                        dim=1)
        ci_proj = F.linear(self._drop(ci), w_ci, con.bias_ih).unbind(1)  # Tr x (B, 3K)
        eps = noise.unbind(1) if noise is not None else [None] * len(ci_proj)
        return list(zip(ci_proj, eps)), w_f, con.recurrent_weights()
