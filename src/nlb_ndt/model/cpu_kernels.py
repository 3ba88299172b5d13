"""The NDT's CPU training kernels: dropout masks from random bytes, and banded attention with
dropout, computed block by block with a hand-written backward.

Why they exist: a CPU training step at dropout 0.5 spent about half of its time outside the
matrix multiplies (issue "the same ensembles for less compute", item 4): PyTorch's dropout
draws one random number per element, a boolean mask promotes to a float copy in every
multiply that uses it (forward and backward), attention heads were made contiguous for
`matmul` and gathered back, `masked_fill` and `where` are unvectorised on the CPU, and
all T x T scores were computed for a band that can be much narrower than T. Measured
effects: bench/RESULTS.md, "fp32 training step (issue: less compute)".

Shape legend: B = trials, T = bins, d = model width, h = heads, dh = d / h; a block is a
run of tq query bins with the window of sk key bins any of them may attend.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["BLOCK_OVERHEAD_PAIRS", "Block", "band_blocks", "banded_attention", "dropout",
           "keep_mask", "residual_dropout", "rows_per_block"]


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 0/1 tensor of `shape` and `dtype` on the CPU, 1 with probability 1 - p.

    One 64-bit draw gives 8 elements 8 random bits each when p is a multiple of 1/256
    (0.5, 0.25, ...: then exact), otherwise 4 elements 16 bits each (p rounded to 1/65536,
    as before). The comparison writes the float mask directly: a boolean mask would be
    converted to float by every multiply that uses it, in the forward and the backward.
    """
    n = math.prod(shape)
    byte_wide = float(p * 256).is_integer()
    per_draw, kind, levels = (8, torch.int8, 256) if byte_wide else (4, torch.int16, 65536)
    bits = torch.empty((n + per_draw - 1) // per_draw, dtype=torch.int64)
    bits.random_(-(2**63), None)  # every bit uniform
    signed = bits.view(kind)[:n].view(shape)  # uniform on [-levels/2, levels/2)
    threshold = round(p * levels) - levels // 2
    return torch.ge(signed, threshold, out=torch.empty(shape, dtype=dtype))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on CPU with a float mask from random bytes (`keep_mask`).

    PyTorch's CPU dropout draws one random number per element and was over half of a CPU
    training step; here one 64-bit draw serves 8 or 4 elements, and the mask already holds
    0 or 1/(1-p), so the forward and the backward are one multiply each. CUDA, and a
    compiled model, keep PyTorch's dropout.
    """
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, True)  # CUDA's fused kernel; compiled, a traceable op
    return x * keep_mask(x.shape, p, dtype=x.dtype).mul_(1.0 / (1.0 - p))


class _AddMasked(torch.autograd.Function):
    """x + y * mask in one pass (addcmul), the mask saved for grad_y = grad * mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(mask)
        return torch.addcmul(x, y, mask)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad, grad * mask, None


def residual_dropout(x: torch.Tensor, y: torch.Tensor, p: float,
                     training: bool) -> torch.Tensor:
    """x + dropout(y): on the CPU one pass instead of a multiply and an add, whose two
    (B, T, d) intermediates cost more than the arithmetic."""
    if not training or p <= 0.0 or x.device.type != "cpu" or p >= 1.0 \
            or torch.compiler.is_compiling() or x.shape != y.shape:
        return x + dropout(y, p, training)
    return _AddMasked.apply(x, y, keep_mask(y.shape, p, dtype=y.dtype).mul_(1.0 / (1.0 - p)))


class Block(NamedTuple):
    """Queries `rows` attend keys `keys` only; `bias` (tq, sk) adds -inf where the mask
    forbids a pair inside that window (None when it allows them all)."""

    rows: slice
    keys: slice
    bias: torch.Tensor | None


def band_blocks(mask: torch.Tensor | None, length: int, rows_per_block: int
                ) -> list[Block] | None:
    """Split the queries of a (T, T) band mask into blocks of `rows_per_block` bins.

    Each block keeps only the key window its rows may see, so the work per block is
    tq x sk instead of tq x T. None when the mask is not a band whose windows move
    forward without gaps (each row one run of keys, both ends non-decreasing, every key
    seen): the backward relies on that to accumulate key gradients without zeroing.
    """
    if mask is None:
        return [Block(slice(0, length), slice(0, length), None)]
    allowed = mask[:length, :length].cpu()
    counts = allowed.sum(1)
    if not bool((counts > 0).all()):
        return None
    first = allowed.int().argmax(1)
    last = length - 1 - allowed.flip(1).int().argmax(1)
    runs = bool((last - first + 1 == counts).all())  # no holes inside a row's window
    monotone = bool((first.diff() >= 0).all() and (last.diff() >= 0).all())
    if not (runs and monotone and first[0] == 0 and last[-1] == length - 1):
        return None
    blocks = []
    for t0 in range(0, length, rows_per_block):
        t1 = min(length, t0 + rows_per_block)
        s0, s1 = int(first[t0]), int(last[t1 - 1]) + 1
        if blocks and s0 > blocks[-1].keys.stop:
            return None  # a key no block sees: its gradient would stay unwritten
        window = allowed[t0:t1, s0:s1]
        bias = None if bool(window.all()) else torch.zeros(window.shape).masked_fill_(
            ~window, float("-inf"))
        blocks.append(Block(slice(t0, t1), slice(s0, s1), bias))
    return blocks


#: The fixed cost of one more block, in (query, key) pairs of work: its dozen extra
#: operations against the pairs it saves. Measured on mc_maze's shape (training steps'
#: CPU time on one thread, blocks of 24 to 180 rows): it puts 50/50 at 64 rows and 8/4
#: at 48, where the measured optimum was flat between 36 and 64.
BLOCK_OVERHEAD_PAIRS = 2000
_BLOCK_ROWS = (16, 24, 32, 48, 64, 96)


def rows_per_block(mask: torch.Tensor | None, length: int) -> int:
    """The block height for `band_blocks` with the least modelled work: the (query, key)
    pairs inside the blocks' windows, plus BLOCK_OVERHEAD_PAIRS per block. The whole
    length (one block, no windows) when that is cheaper, as for a band as wide as T."""
    if mask is None:
        return length
    allowed = mask[:length, :length].cpu()
    first = allowed.int().argmax(1)
    last = length - 1 - allowed.flip(1).int().argmax(1)
    best_rows, best_cost = length, length * length + BLOCK_OVERHEAD_PAIRS
    for rows in _BLOCK_ROWS:
        starts = range(0, length, rows)
        cost = sum((min(length, t0 + rows) - t0) * int(last[min(length, t0 + rows) - 1]
                                                       - first[t0] + 1) for t0 in starts)
        cost += BLOCK_OVERHEAD_PAIRS * len(starts)
        if cost < best_cost:
            best_rows, best_cost = rows, cost
    return best_rows


def _accumulate(dst: torch.Tensor, keys: slice, value: torch.Tensor, alpha: float,
                covered: int) -> None:
    """dst[:, keys] = alpha * value, adding where an earlier block already wrote
    (rows below `covered`); windows only move forward, so the rest is written fresh."""
    overlap = max(0, min(covered, keys.stop) - keys.start)
    if overlap:
        dst[:, keys.start:keys.start + overlap].add_(value[:, :overlap], alpha=alpha)
    if keys.start + overlap < keys.stop:
        torch.mul(value[:, overlap:], alpha, out=dst[:, keys.start + overlap:keys.stop])


class _BandedAttention(torch.autograd.Function):
    """softmax(QK^T / sqrt(dh) + mask) with dropout, times V, per head and block.

    The scores' 1/sqrt(dh) is the GEMM's alpha; the dropout mask is kept 0/1 and its
    1/(1-p) is applied to the (B, tq, dh) products, where the copy into the output or the
    gradient happens anyway. Saved per block: the probabilities, their product with the
    mask (the next GEMM's operand) and the mask.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, blocks: list[Block], p: float):
        B, T, d = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        dh = d // heads
        keep = 1.0 / (1.0 - p)
        out = qkv.new_empty(B, T, d)
        unused = qkv.new_empty(())  # baddbmm's input at beta=0: the GEMM alone, scaled
        saved = []
        for h in range(heads):
            q, k, v = (qkv[..., i * d + h * dh:i * d + (h + 1) * dh] for i in range(3))
            for blk in blocks:
                shape = (B, blk.rows.stop - blk.rows.start, blk.keys.stop - blk.keys.start)
                bias = unused if blk.bias is None else blk.bias
                scores = torch.baddbmm(bias.expand(shape), q[:, blk.rows],
                                       k[:, blk.keys].transpose(1, 2),
                                       beta=0.0 if blk.bias is None else 1.0, alpha=dh ** -0.5)
                prob = torch.softmax(scores, dim=-1)
                del scores  # its memory serves the next allocation
                mask = keep_mask(shape, p, dtype=prob.dtype) if p > 0 else None
                kept = prob if mask is None else prob * mask
                torch.mul(torch.bmm(kept, v[:, blk.keys]), keep,
                          out=out[:, blk.rows, h * dh:(h + 1) * dh])
                saved += [prob, kept] if mask is None else [prob, kept, mask]
        ctx.save_for_backward(qkv, *saved)
        ctx.heads, ctx.blocks, ctx.p = heads, blocks, p
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        qkv, *saved = ctx.saved_tensors
        d = qkv.shape[2] // 3
        dh = d // ctx.heads
        keep, scale = 1.0 / (1.0 - ctx.p), dh ** -0.5
        dqkv = torch.empty_like(qkv)
        dq_all, dk_all, dv_all = dqkv[..., :d], dqkv[..., d:2 * d], dqkv[..., 2 * d:]
        items = iter(saved)
        for h in range(ctx.heads):
            cols = slice(h * dh, (h + 1) * dh)
            q, k, v = (qkv[..., i * d + h * dh:i * d + (h + 1) * dh] for i in range(3))
            covered = 0
            for blk in ctx.blocks:
                prob, kept = next(items), next(items)
                g = grad[:, blk.rows, cols]
                dkept = torch.bmm(g, v[:, blk.keys].transpose(1, 2))
                dv = torch.bmm(kept.transpose(1, 2), g)
                if ctx.p > 0:
                    dkept.mul_(next(items))
                ds = torch._softmax_backward_data(dkept, prob, -1, prob.dtype)
                del dkept
                torch.mul(torch.bmm(ds, k[:, blk.keys]), keep * scale,
                          out=dq_all[:, blk.rows, cols])
                dk = torch.bmm(ds.transpose(1, 2), q[:, blk.rows])
                _accumulate(dk_all[..., cols], blk.keys, dk, keep * scale, covered)
                _accumulate(dv_all[..., cols], blk.keys, dv, keep, covered)
                covered = blk.keys.stop
        return dqkv, None, None, None


def banded_attention(qkv: torch.Tensor, heads: int, blocks: list[Block],
                     p: float) -> torch.Tensor:
    """Multi-head attention of packed projections qkv (B, T, 3d) -> (B, T, d), heads
    concatenated, dropout p on the probabilities, only inside `blocks`' windows."""
    return _BandedAttention.apply(qkv, heads, blocks, p)
