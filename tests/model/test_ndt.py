"""Model tests on tiny shapes: shapes, loss, band mask, fast/plain parity, original names."""

from __future__ import annotations

import math

import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.ndt import IGNORE_INDEX, context_mask, poisson_loss

N_IN, N_OUT, T_OBS, T_FWD = 5, 3, 10, 3


def tiny_cfg(**model):
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.EMBED_DIM, m.NUM_LAYERS, m.NUM_HEADS, m.HIDDEN_SIZE = 0, 2, 2, 16
    m.LEARNABLE_POSITION, m.PRE_NORM, m.FIXUP_INIT = True, True, True
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD = 2, 3
    for key, value in model.items():
        setattr(m, key, value)
    return cfg


def tiny_model(**model):
    torch.manual_seed(0)
    return build_model(tiny_cfg(**model), num_neurons=N_IN + N_OUT, trial_length=T_OBS + T_FWD,
                       max_spikes=6)


def test_model_output_shape_and_finite_loss():
    """Verify that the model maps (B, T, N) counts to (B, T, N) log-rates with a finite loss."""
    model = tiny_model()
    x = torch.randint(0, 4, (4, T_OBS + T_FWD, N_IN + N_OUT)).float()
    loss, log_rates = model(x, x.clone())
    assert log_rates.shape == x.shape
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_poisson_loss_only_labelled_elements_count():
    """Verify that the loss equals the closed-form Poisson NLL mean over labelled entries only."""
    log_rates = torch.randn(2, 4, 3)
    labels = torch.full((2, 4, 3), float(IGNORE_INDEX))
    labels[0, 1, 2] = 3.0
    labels[1, 3, 0] = 0.0
    expected = ((log_rates[0, 1, 2].exp() - 3 * log_rates[0, 1, 2])
                + log_rates[1, 3, 0].exp()) / 2
    assert torch.allclose(poisson_loss(log_rates, labels), expected)
    # Changing an unlabelled prediction leaves the loss unchanged.
    changed = log_rates.clone()
    changed[0, 0, 0] += 5
    assert torch.allclose(poisson_loss(changed, labels), expected)


def test_context_mask_matches_band_definition():
    """Verify that query t sees exactly keys t-CB..t+CF, with the original's 0/negative rules."""
    T, cf, cb = 12, 2, 3
    mask = context_mask(T, cf, cb)
    for t in range(T):
        for s in range(T):
            assert bool(mask[t, s]) == (t - cb <= s <= t + cf)
    assert context_mask(T, -1, 3)[0].all()  # forward < 0: unlimited ahead
    assert context_mask(T, 2, 0)[T - 1].all()  # backward <= 0: unlimited behind
    assert context_mask(T, 2, 3, full_context=True).all()


def test_band_mask_blocks_information_outside_the_context():
    """Verify that changing an input outside a bin's band does not change that bin's output."""
    model = tiny_model(DROPOUT=0.0, DROPOUT_RATES=0.0, DROPOUT_EMBEDDING=0.0, NUM_LAYERS=1)
    model.eval()
    x = torch.randint(0, 3, (1, T_OBS + T_FWD, N_IN + N_OUT)).float()
    y = x.clone()
    # One neuron only: a shift of every neuron of a bin is removed by the pre-LayerNorm.
    y[0, 10, 1] += 2  # bin 10 is outside bin 0's band (0 - 3 .. 0 + 2) with one layer
    _, a = model(x)
    _, b = model(y)
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-6)
    assert not torch.allclose(a[0, 9], b[0, 9])  # bin 9 sees bin 10


@pytest.mark.parametrize("embed_dim", [0, 2])
def test_fast_and_plain_attention_agree(embed_dim):
    """Verify that the fused-attention path equals the textbook path in fp32 on CPU."""
    kwargs = dict(DROPOUT=0.0, DROPOUT_RATES=0.0, DROPOUT_EMBEDDING=0.0, EMBED_DIM=embed_dim)
    fast = tiny_model(FAST_ATTENTION=True, **kwargs)
    plain = tiny_model(FAST_ATTENTION=False, **kwargs)
    plain.load_state_dict(fast.state_dict())
    x = torch.randint(0, 4, (3, T_OBS + T_FWD, N_IN + N_OUT)).float()
    lf, rf = fast(x, x.clone())
    lp, rp = plain(x, x.clone())
    assert torch.allclose(rf, rp, atol=1e-5)
    lf.backward()
    lp.backward()
    for (name, pf), pp in zip(fast.named_parameters(), plain.parameters()):
        assert torch.allclose(pf.grad, pp.grad, atol=1e-5), name


def test_state_dict_has_the_original_names_and_shapes():
    """Verify that parameter/buffer names and shapes equal the original NDT's (strict loading)."""
    N, T, L = 182, 180, 4
    cfg = tiny_cfg(NUM_LAYERS=L, HIDDEN_SIZE=128)
    sd = build_model(cfg, num_neurons=N, trial_length=T, max_spikes=10).state_dict()
    expected = {"pos_encoder.pe": (T, 1), "pos_encoder.pos_embedding.weight": (T, N),
                "transformer_encoder.norm.weight": (N,), "transformer_encoder.norm.bias": (N,),
                "decoder.0.weight": (N, N), "decoder.0.bias": (N,)}
    for i in range(L):
        p = f"transformer_encoder.layers.{i}."
        expected.update({
            p + "self_attn.in_proj_weight": (3 * N, N), p + "self_attn.in_proj_bias": (3 * N,),
            p + "self_attn.out_proj.weight": (N, N), p + "self_attn.out_proj.bias": (N,),
            p + "linear1.weight": (128, N), p + "linear1.bias": (128,),
            p + "linear2.weight": (N, 128), p + "linear2.bias": (N,),
            p + "norm1.weight": (N,), p + "norm1.bias": (N,),
            p + "norm2.weight": (N,), p + "norm2.bias": (N,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # Learned positions index 0..T-1 (the original's +1 offset ran off the table).
    assert sd["pos_encoder.pe"][:, 0].tolist() == list(range(T))
    # About 0.8 M parameters for mc_maze, as the reference states.
    assert 0.75e6 < sum(v.numel() for k, v in sd.items() if k != "pos_encoder.pe") < 0.85e6
    # area2_bump's per-count embedding: embedder.0.weight (max_spikes + 2, 2), d = 2N.
    sd2 = build_model(tiny_cfg(EMBED_DIM=2), num_neurons=65, trial_length=160,
                      max_spikes=10).state_dict()
    assert tuple(sd2["embedder.0.weight"].shape) == (12, 2)
    assert tuple(sd2["decoder.0.weight"].shape) == (65, 130)


def test_fixup_scales_residual_weights():
    """Verify that T-Fixup scales linear1, linear2 and out_proj by 0.67 * L^-1/4."""
    torch.manual_seed(1)
    plain = build_model(tiny_cfg(FIXUP_INIT=False), num_neurons=8, trial_length=13, max_spikes=6)
    torch.manual_seed(1)
    fixup = build_model(tiny_cfg(FIXUP_INIT=True), num_neurons=8, trial_length=13, max_spikes=6)
    scale = 0.67 * 2 ** -0.25
    for name in ("linear1.weight", "linear2.weight", "self_attn.out_proj.weight"):
        a = plain.state_dict()[f"transformer_encoder.layers.0.{name}"]
        b = fixup.state_dict()[f"transformer_encoder.layers.0.{name}"]
        assert torch.allclose(a * scale, b)
    assert math.isclose(scale, 0.5634, rel_tol=1e-3)


def _patched_masks(monkeypatch, full: torch.Tensor, blocks) -> None:
    """Serve `cpu_kernels.keep_mask` from one fixed (B, h, T, T) 0/1 mask: all of it to the
    plain path's one call, and each head's block windows, in order, to the banded path's."""
    from nlb_ndt.model import cpu_kernels

    windows = iter([full[:, h, b.rows, b.keys] for h in range(full.shape[1]) for b in blocks])

    def fake(shape, p, *, dtype=torch.float32):
        mask = full if tuple(shape) == tuple(full.shape) else next(windows)
        assert tuple(mask.shape) == tuple(shape)
        return mask.to(dtype)

    monkeypatch.setattr(cpu_kernels, "keep_mask", fake)


@pytest.mark.parametrize("context", [(0, 0), (2, 3), (5, 1), (-1, 4), (3, 0), (30, 30), None])
@pytest.mark.parametrize("rows", [1, 4, 7, 23])
def test_banded_training_path_matches_the_plain_path(monkeypatch, context, rows):
    """Verify that the blocked CPU attention with dropout equals the plain softmax path with
    the same dropout mask, forward and gradients, on bands of every width (and no band)."""
    from nlb_ndt.model import cpu_kernels
    from nlb_ndt.model.ndt import BandedSelfAttention

    T, d, heads, p = 23, 12, 2, 0.3
    mask = None if context is None else context_mask(T, *context)
    blocks = cpu_kernels.band_blocks(mask, T, rows)
    assert blocks is not None
    monkeypatch.setattr(cpu_kernels, "rows_per_block", lambda *_: rows)
    torch.manual_seed(0)
    fast = BandedSelfAttention(d, heads, p, fast=True).train()
    plain = BandedSelfAttention(d, heads, p, fast=False).train()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(3, T, d)
    full = (torch.rand(3, heads, T, T) >= p).float()
    outputs, grads = [], []
    for module in (fast, plain):
        _patched_masks(monkeypatch, full, blocks)
        xi = x.clone().requires_grad_()
        out, _ = module(xi, mask)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        outputs.append(out)
        grads.append([xi.grad] + [q.grad for q in module.parameters()])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    for gf, gp in zip(*grads):
        assert torch.allclose(gf, gp, atol=1e-5)
