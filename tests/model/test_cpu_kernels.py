"""The NDT's fast CPU pieces: dropout masks from random bytes, and the band blocks of the
attention path (the path itself is checked against the plain one in test_ndt.py)."""

from __future__ import annotations

import pytest
import torch

from nlb_ndt.model.cpu_kernels import band_blocks, dropout, keep_mask, rows_per_block
from nlb_ndt.model.ndt import context_mask


def test_band_blocks_cover_each_band_and_refuse_other_masks():
    """Verify that the blocks' windows hold every allowed pair of a band, and that a mask
    that is not a forward-moving band gets no blocks (the plain path then runs)."""
    T = 40
    for cf, cb in [(0, 0), (3, 8), (8, 3), (-1, 5), (5, 0), (50, 50)]:
        mask = context_mask(T, cf, cb)
        rows = rows_per_block(mask, T)
        covered = torch.zeros(T, T, dtype=torch.bool)
        for blk in band_blocks(mask, T, rows):
            window = mask[blk.rows, blk.keys]
            bias = torch.zeros(window.shape) if blk.bias is None else blk.bias
            assert torch.equal(bias == 0, window)  # -inf exactly where the band forbids
            covered[blk.rows, blk.keys] |= window
        assert torch.equal(covered, mask)
    assert rows_per_block(context_mask(180, 100, 100), 180) == 180  # nearly full: one block
    shuffled = context_mask(T, 2, 2)[torch.randperm(T, generator=torch.Generator().manual_seed(0))]
    assert band_blocks(shuffled, T, 8) is None
    assert band_blocks(torch.eye(T, dtype=torch.bool) | torch.eye(T, dtype=torch.bool).flip(1),
                       T, 8) is None


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3, 0.7])
def test_keep_mask_keeps_one_minus_p(p):
    """Verify that the CPU dropout mask is 0/1 in the asked dtype and keeps 1 - p of the
    elements (8-bit draws for multiples of 1/256, 16-bit otherwise)."""
    torch.manual_seed(0)
    mask = keep_mask((64, 100, 50), p, dtype=torch.float64)
    assert mask.dtype == torch.float64
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(mask.mean().item() - (1 - p)) < 0.005
    x = torch.ones(1000, 100, dtype=torch.float64)
    dropped = dropout(x, p, True)
    assert set(dropped.unique().tolist()) <= {0.0, 1.0 / (1.0 - p)}
    assert abs(dropped.mean().item() - 1.0) < 0.02  # inverted dropout keeps the mean
    assert dropout(x, p, False) is x
