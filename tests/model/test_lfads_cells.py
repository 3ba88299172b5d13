"""LFADS's recurrent pieces: the GRU cell against its formula (and against torch's GRUCell,
which is not the same cell), sequence runs in both directions, the normalised factor map."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nlb_ndt.model.lfads_cells import (
    BidirectionalClippedGRU,
    ClippedGRUCell,
    NormalizedLinear,
)


def random_cell(d: int = 5, h: int = 4, clip: float = 100.0, seed: int = 0) -> ClippedGRUCell:
    """A float64 cell with every tensor random (bias_hh too, which lfads-torch stores)."""
    torch.manual_seed(seed)
    cell = ClippedGRUCell(d, h, clip, encoder=False).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0.0, 0.7)
    return cell


def formula(cell: ClippedGRUCell, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The facts sheet's step: rows (z, r, n), n = tanh(x Wn + bn_ih + (r * h) Un + bn_hh),
    h' = z h + (1 - z) n, clamped to +-clip."""
    w_ih, w_hh = cell.weight_ih.detach().numpy(), cell.weight_hh.detach().numpy()
    b_ih, b_hh = cell.bias_ih.detach().numpy(), cell.bias_hh.detach().numpy()
    z_rows, r_rows, n_rows = np.split(np.arange(w_ih.shape[0]), 3)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    z = sig(x @ w_ih[z_rows].T + b_ih[z_rows] + h @ w_hh[z_rows].T + b_hh[z_rows])
    r = sig(x @ w_ih[r_rows].T + b_ih[r_rows] + h @ w_hh[r_rows].T + b_hh[r_rows])
    n = np.tanh(x @ w_ih[n_rows].T + b_ih[n_rows] + (r * h) @ w_hh[n_rows].T + b_hh[n_rows])
    return np.clip(z * h + (1 - z) * n, -cell.clip, cell.clip)


def test_gru_cell_step_is_the_lfads_torch_formula():
    """Verify that one step equals the sheet's formula (gate order z, r, n; reset before
    the recurrent matmul; bias_hh used)."""
    cell = random_cell()
    rng = np.random.default_rng(1)
    x, h = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    got = cell(torch.from_numpy(x), torch.from_numpy(h)).detach().numpy()
    np.testing.assert_allclose(got, formula(cell, x, h), rtol=1e-12, atol=1e-12)


def test_torch_gru_cell_with_the_same_weights_is_a_different_cell():
    """Verify that nn.GRUCell (the trap) loaded with the same four tensors gives other states (it
    reads the rows as r, z, n and applies the reset after the matmul)."""
    cell = random_cell()
    torch_cell = nn.GRUCell(5, 4).double()
    torch_cell.load_state_dict(cell.state_dict())  # the same names and shapes load...
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    ours, theirs = cell(x, h), torch_cell(x, h)
    assert (ours - theirs).abs().max() > 1e-2  # ...and compute something else


def test_gru_cell_clamps_every_new_state():
    """Verify that states beyond +-clip are clamped, and only those."""
    cell = random_cell(clip=0.3, seed=2)
    rng = np.random.default_rng(3)
    x, h = 3 * rng.normal(size=(8, 5)), rng.uniform(-0.3, 0.3, size=(8, 4))
    loose = random_cell(clip=100.0, seed=2)
    unclipped = loose(torch.from_numpy(x), torch.from_numpy(h)).detach().numpy()
    got = cell(torch.from_numpy(x), torch.from_numpy(h)).detach().numpy()
    assert (np.abs(unclipped) > 0.3).any()
    np.testing.assert_allclose(got, np.clip(unclipped, -0.3, 0.3), rtol=1e-12)


def test_gru_cell_init_and_frozen_bias_hh():
    """Verify that the init follows lfads-torch: gate biases (1, 1, 0), bias_hh zero and
    frozen, and the fan of encoder cells (in + H) against decoder cells (in for weight_ih,
    H for weight_hh)."""
    torch.manual_seed(0)
    enc = ClippedGRUCell(300, 100, 5.0, encoder=True)
    dec = ClippedGRUCell(300, 100, 5.0, encoder=False)
    std = lambda w: float(w.detach().std())  # noqa: E731
    assert torch.equal(enc.bias_ih, torch.cat([torch.ones(200), torch.zeros(100)]))
    assert not dec.bias_hh.any() and not dec.bias_hh.requires_grad
    assert abs(std(enc.weight_hh) - 1 / 20) < 0.003  # 1/sqrt(300 + 100)
    assert abs(std(dec.weight_ih) - 1 / np.sqrt(300)) < 0.003
    assert abs(std(dec.weight_hh) - 1 / 10) < 0.006
    assert ClippedGRUCell(0, 6, 5.0, encoder=False).weight_ih.shape == (18, 0)


def test_bidirectional_gru_runs_backward_over_reversed_time():
    """Verify that the fwd half is the cell run forward, the bwd half the other cell run
    from the last bin back (returned in forward time order), and the final states."""
    torch.manual_seed(4)
    gru = BidirectionalClippedGRU(3, 2, 5.0).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64)
    fwd, bwd, last = gru(x, h0)
    hf, hb = h0[0], h0[1]
    for t in range(6):
        hf = gru.fwd_gru.cell(x[:, t], hf)
        torch.testing.assert_close(fwd[:, t], hf)
    for t in reversed(range(6)):
        hb = gru.bwd_gru.cell(x[:, t], hb)
        torch.testing.assert_close(bwd[:, t], hb)
    torch.testing.assert_close(last, torch.cat([fwd[:, -1], bwd[:, 0]], dim=1))


def test_normalized_linear_uses_unit_rows_and_no_bias():
    """Verify that the factor map divides each weight row by its norm and has no bias."""
    layer = NormalizedLinear(4, 3)
    assert layer.bias is None
    x = torch.randn(5, 4)
    w = layer.weight.detach()
    torch.testing.assert_close(layer(x), x @ (w / w.norm(dim=1, keepdim=True)).T)
