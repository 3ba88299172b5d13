"""STNDT against an independent, step-by-step implementation of its equations.

The reference below is written from the STNDT facts sheet (docs: shared/reference/stndt.md),
time-major as the sheet writes it (temporal stream T x B x N, spatial stream N x B x T), in
float64 with plain torch ops and loops over heads. Weights are random tensors made from the
sheet's list of names and shapes, loaded into both by name (strictly into our model).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.config.typed import StndtConfig, model_config, stndt_config
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.inference import predict_rates
from nlb_ndt.model.ndt import NDT
from nlb_ndt.model.stndt import STNDT, ScaleNorm

HIDDEN, LAYERS = 8, 2


def stndt_cfg(**model):
    """An STNDT config: 2 layers, banded context, our defaults elsewhere."""
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.SPATIAL_ATTENTION, m.EMBED_DIM, m.NUM_LAYERS, m.HIDDEN_SIZE = True, 0, LAYERS, HIDDEN
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD = 2, 3
    for key, value in model.items():
        if key == "OFFSET":
            m.POSITION.OFFSET = value
        else:
            setattr(m, key, value)
    return cfg


# --- The reference, from the sheet -----------------------------------------------------


def sinusoid(length: int, d: int, offset: bool) -> torch.Tensor:
    """pe[p, 2i] = sin(p' 10000^(-2i/d)), pe[p, 2i+1] = cos(same), p' = p (+1 with OFFSET)."""
    pe = torch.zeros(length, d, dtype=torch.float64)
    for p in range(length):
        for col in range(d):
            angle = (p + int(offset)) * 10000.0 ** (-2 * (col // 2) / d)
            pe[p, col] = math.sin(angle) if col % 2 == 0 else math.cos(angle)
    return pe


def allowed_keys(T: int, cf: int, cb: int, full: bool) -> torch.Tensor:
    """Query i sees key j iff j <= i + CF (CF < 0: unlimited) and j >= i - CB (CB <= 0: unl.)."""
    ok = torch.ones(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            if not full:
                ok[i, j] = (cf < 0 or j <= i + cf) and (cb <= 0 or j >= i - cb)
    return ok


def linear(x, sd, prefix):
    return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def layer_norm(x, sd, prefix):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]


def attention(x, sd, prefix, heads, allowed):
    """Multi-head self-attention of time-major x (L, B, E): (output, head-averaged weights)."""
    L, B, E = x.shape
    w, b = sd[prefix + ".in_proj_weight"], sd[prefix + ".in_proj_bias"]
    q, k, v = (x @ w[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E] for i in range(3))
    dh = E // heads
    out = torch.zeros(L, B, E, dtype=x.dtype)
    avg = torch.zeros(B, L, L, dtype=x.dtype)
    for head in range(heads):
        cols = slice(head * dh, (head + 1) * dh)
        scores = torch.einsum("ibd,jbd->bij", q[..., cols], k[..., cols]) / math.sqrt(dh)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        avg += p / heads
        out[..., cols] = torch.einsum("bij,jbd->ibd", p, v[..., cols])
    return linear(out, sd, prefix + ".out_proj"), avg


def ffn(x, sd, first, second, act):
    return linear(act(linear(x, sd, first)), sd, second)


def reference_log_rates(sd, x, *, heads, pre_norm, learned, lin, offset, cf=2, cb=3,
                        full=False, scale_norm=False, act=torch.relu):
    """STNDT's eval-mode forward pass, step by step as the sheet states it."""
    B, T, N = x.shape
    h = x.permute(1, 0, 2)  # T x B x N
    s = x.permute(2, 0, 1)  # N x B x T
    if lin:
        h, s = linear(h, sd, "embedder.0"), linear(s, sd, "spatial_embedder.0")
    h, s = h * math.sqrt(N), s * math.sqrt(T)
    if learned:
        h = h + sd["src_pos_encoder.pos_embedding.weight"][:, None, :]
        s = s + sd["spatial_pos_encoder.pos_embedding.weight"][:, None, :]
    else:
        h = h + sinusoid(T, N, offset)[:, None, :]
        s = s + sinusoid(N, T, offset)[:, None, :]
    allowed = allowed_keys(T, cf, cb, full)
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        if i > 0:
            s = h.permute(2, 1, 0)  # the previous layer's output, not re-embedded
        if pre_norm:
            h = h + attention(layer_norm(h, sd, p + "norm1"), sd, p + "self_attn", heads,
                              allowed)[0]
            h = h + ffn(layer_norm(h, sd, p + "norm2"), sd, p + "linear1", p + "linear2", act)
            _, w = attention(layer_norm(s, sd, p + "spatial_norm1"), sd,
                             p + "spatial_self_attn", heads, None)
            h = h + torch.einsum("bnm,tbm->tbn", w, layer_norm(h, sd, p + "ts_norm1"))
            h = h + ffn(layer_norm(h, sd, p + "ts_norm2"), sd, p + "ts_linear1",
                        p + "ts_linear2", act)
        else:
            h = layer_norm(h + attention(h, sd, p + "self_attn", heads, allowed)[0], sd,
                           p + "norm1")
            h = layer_norm(h + ffn(h, sd, p + "linear1", p + "linear2", act), sd, p + "norm2")
            _, w = attention(s, sd, p + "spatial_self_attn", heads, None)
            h = layer_norm(h + torch.einsum("bnm,tbm->tbn", w, h), sd, p + "ts_norm1")
            h = layer_norm(h + ffn(h, sd, p + "ts_linear1", p + "ts_linear2", act), sd,
                           p + "ts_norm2")
    if scale_norm:
        norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True)
        h = h * sd["transformer_encoder.norm.scale"] / torch.clamp(norm, min=1e-5)
    else:
        h = layer_norm(h, sd, "transformer_encoder.norm")
    return linear(h, sd, "src_decoder.0").permute(1, 0, 2)  # B x T x N


def sheet_state(N, T, *, lin, learned, offset, scale_norm, seed=0):
    """Random weights under every name and shape the sheet lists (2 layers)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"src_decoder.0.weight": (N, N), "src_decoder.0.bias": (N,)}
    if lin:
        shapes.update({"embedder.0.weight": (N, N), "embedder.0.bias": (N,),
                       "spatial_embedder.0.weight": (T, T), "spatial_embedder.0.bias": (T,)})
    if learned:
        shapes.update({"src_pos_encoder.pos_embedding.weight": (T, N),
                       "spatial_pos_encoder.pos_embedding.weight": (N, T)})
    shapes.update({"transformer_encoder.norm.scale": ()} if scale_norm else
                  {"transformer_encoder.norm.weight": (N,), "transformer_encoder.norm.bias": (N,)})
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        for name, d in (("self_attn", N), ("spatial_self_attn", T)):
            shapes.update({p + name + ".in_proj_weight": (3 * d, d),
                           p + name + ".in_proj_bias": (3 * d,),
                           p + name + ".out_proj.weight": (d, d),
                           p + name + ".out_proj.bias": (d,)})
        for name, d in (("norm1", N), ("norm2", N), ("spatial_norm1", T), ("ts_norm1", N),
                        ("ts_norm2", N)):
            shapes.update({p + name + ".weight": (d,), p + name + ".bias": (d,)})
        for first, second in (("linear1", "linear2"), ("ts_linear1", "ts_linear2")):
            shapes.update({p + first + ".weight": (HIDDEN, N), p + first + ".bias": (HIDDEN,),
                           p + second + ".weight": (N, HIDDEN), p + second + ".bias": (N,)})
    sd = {k: 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
          for k, shape in shapes.items()}
    for k in sd:  # norm gains near 1, so no norm is degenerate
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            sd[k] += 1.0
    if scale_norm:
        sd["transformer_encoder.norm.scale"] = torch.tensor(2.5, dtype=torch.float64)
    if learned:
        sd["src_pos_encoder.pe"] = torch.arange(T).unsqueeze(1)
        sd["spatial_pos_encoder.pe"] = torch.arange(N).unsqueeze(1)
    else:
        sd["src_pos_encoder.pe"] = sinusoid(T, N, offset).unsqueeze(1)
        sd["spatial_pos_encoder.pe"] = sinusoid(N, T, offset).unsqueeze(1)
    return sd


def counts(N, T, trials=3, seed=1):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.poisson(1.0, (trials, T, N)).astype(np.float64))


def ours(sd, N, T, **model) -> torch.nn.Module:
    """Our STNDT in float64 with the sheet-named weights `sd` loaded strictly, eval mode."""
    torch.manual_seed(0)
    net = build_model(stndt_cfg(**model), num_neurons=N, trial_length=T, max_spikes=5).double()
    net.load_state_dict(sd, strict=True)
    return net.eval()


# Shapes where a transposed N/T could not pass: coprime with one head, N > T with two.
SHAPES = [(7, 12, 1), (10, 6, 2)]
POSITIONS = {"learned": (True, False), "sinusoid": (False, False),
             "sinusoid+1": (False, True)}


@pytest.mark.parametrize("N, T, heads", SHAPES)
@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("lin", [True, False])
def test_forward_matches_the_sheets_equations(N, T, heads, positions, pre_norm, lin):
    """Verify that our STNDT's eval log-rates equal the sheet's equations computed step by
    step, for pre-/post-norm, learned/sinusoidal positions, with and without LINEAR_EMBEDDER."""
    learned, offset = POSITIONS[positions]
    sd = sheet_state(N, T, lin=lin, learned=learned, offset=offset, scale_norm=False)
    net = ours(sd, N, T, NUM_HEADS=heads, PRE_NORM=pre_norm, LEARNABLE_POSITION=learned,
               OFFSET=offset, LINEAR_EMBEDDER=lin)
    x = counts(N, T)
    with torch.no_grad():
        got = net(x)[1]
    want = reference_log_rates(sd, x, heads=heads, pre_norm=pre_norm, learned=learned, lin=lin,
                               offset=offset)
    assert got.shape == (3, T, N)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pre_norm", [True, False])
def test_scale_norm_and_gelu_match_the_sheet(pre_norm):
    """Verify the final ScaleNorm (x * scale / max(||x||, 1e-5)) and gelu against the sheet."""
    N, T = 7, 12
    sd = sheet_state(N, T, lin=True, learned=True, offset=False, scale_norm=True)
    net = ours(sd, N, T, NUM_HEADS=1, PRE_NORM=pre_norm, LEARNABLE_POSITION=True, OFFSET=False,
               LINEAR_EMBEDDER=True, SCALE_NORM=True, ACTIVATION="gelu")
    assert isinstance(net.transformer_encoder.norm, ScaleNorm)
    x = counts(N, T)
    with torch.no_grad():
        got = net(x)[1]
    want = reference_log_rates(sd, x, heads=1, pre_norm=pre_norm, learned=True, lin=True,
                               offset=False, scale_norm=True,
                               act=torch.nn.functional.gelu)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cf, cb, full", [(2, 3, False), (0, 1, False), (-1, 0, False),
                                          (4, -2, False), (1, 1, True)])
def test_context_masks_match_the_sheet(cf, cb, full):
    """Verify the temporal band (CONTEXT_FORWARD/BACKWARD, their unlimited values and
    FULL_CONTEXT) against the sheet's rule, in the mask and in the log-rates."""
    N, T = 10, 6
    sd = sheet_state(N, T, lin=False, learned=True, offset=False, scale_norm=False)
    net = ours(sd, N, T, NUM_HEADS=2, PRE_NORM=True, LEARNABLE_POSITION=True, OFFSET=False,
               CONTEXT_FORWARD=cf, CONTEXT_BACKWARD=cb, FULL_CONTEXT=full)
    assert torch.equal(net.attn_mask, allowed_keys(T, cf, cb, full))
    x = counts(N, T)
    with torch.no_grad():
        got = net(x)[1]
    want = reference_log_rates(sd, x, heads=2, pre_norm=True, learned=True, lin=False,
                               offset=False, cf=cf, cb=cb, full=full)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_band_blocks_time_when_neuron_mixing_cannot_carry_it():
    """Verify that with uniform weights over neurons (zero query/key projections) a bin
    outside a bin's band does not reach it; with learned weights it may (W sees all bins)."""
    N, T = 7, 12
    torch.manual_seed(3)
    net = build_model(stndt_cfg(NUM_HEADS=1, NUM_LAYERS=1, PRE_NORM=True), num_neurons=N,
                      trial_length=T, max_spikes=5).eval()
    x = counts(N, T, trials=1).float()
    y = x.clone()
    y[0, 10, 1] += 3  # bin 10 is outside bin 0's band (0 - 3 .. 0 + 2)
    with torch.no_grad():
        assert not torch.allclose(net(x)[1][0, 0], net(y)[1][0, 0])  # W carries it
        attn = net.transformer_encoder.layers[0].spatial_self_attn
        attn.in_proj_weight[: 2 * T].zero_()
        attn.in_proj_bias[: 2 * T].zero_()
        torch.testing.assert_close(net(x)[1][0, 0], net(y)[1][0, 0])
        assert not torch.allclose(net(x)[1][0, 9], net(y)[1][0, 9])  # bin 9 sees bin 10


def test_sinusoid_buffers_follow_the_formula():
    """Verify that the model's own sinusoid buffers (before any loading) are the formula's."""
    net = build_model(stndt_cfg(NUM_HEADS=1, LEARNABLE_POSITION=False), num_neurons=7,
                      trial_length=12, max_spikes=5)
    torch.testing.assert_close(net.src_pos_encoder.pe[:, 0].double(), sinusoid(12, 7, True),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(net.spatial_pos_encoder.pe[:, 0].double(),
                               sinusoid(7, 12, True), rtol=0, atol=1e-6)


def test_spatial_attention_off_builds_exactly_our_ndt():
    """Verify that SPATIAL_ATTENTION False (the default) builds the NDT, bit for bit."""
    cfg = stndt_cfg(SPATIAL_ATTENTION=False, NUM_HEADS=1, LEARNABLE_POSITION=True, PRE_NORM=True)
    torch.manual_seed(5)
    built = build_model(cfg, num_neurons=7, trial_length=12, max_spikes=5).eval()
    torch.manual_seed(5)
    direct = NDT(model_config(cfg.MODEL), num_neurons=7, trial_length=12, max_spikes=5).eval()
    assert type(built) is NDT
    assert built.state_dict().keys() == direct.state_dict().keys()
    x = counts(7, 12).float()
    with torch.no_grad():
        assert torch.equal(built(x)[1], direct(x)[1])


def test_head_averaged_weights_equal_the_ndts_attention_weights():
    """Verify that the shared attention's head-averaged weights are the mean over heads of
    what the NDT's plain path returns."""
    cfg = stndt_cfg(SPATIAL_ATTENTION=False, NUM_HEADS=2, PRE_NORM=True)
    torch.manual_seed(2)
    ndt = build_model(cfg, num_neurons=8, trial_length=12, max_spikes=5).eval()
    x = counts(8, 12).float()
    layer = ndt.transformer_encoder.layers[0]
    with torch.no_grad():
        tokens = ndt.pos_encoder(x * ndt.scale)
        mine = layer.self_attn.head_averaged_weights(layer.norm1(tokens), ndt.attn_mask)
        torch.testing.assert_close(mine, ndt.attention_weights(x)[0].mean(dim=1))


def test_loss_gradients_and_predict_rates():
    """Verify the NDT interface: (B, T, N) log-rates, a finite Poisson loss with gradients,
    and predict_rates on held-in spikes."""
    net = build_model(stndt_cfg(NUM_HEADS=2, LINEAR_EMBEDDER=True, PRE_NORM=True),
                      num_neurons=8, trial_length=12, max_spikes=4)
    assert (net.num_neurons, net.trial_length, net.max_spikes) == (8, 12, 4)
    x = counts(8, 12, trials=4).float()
    loss, log_rates = net(x, x.clone())
    assert log_rates.shape == x.shape and torch.isfinite(loss)
    loss.backward()
    assert net.embedder[0].weight.grad is not None
    assert net.transformer_encoder.layers[0].spatial_norm1.weight.grad is not None
    rates = predict_rates(net, np.random.default_rng(0).poisson(1, (5, 9, 6)))
    assert rates.shape == (5, 12, 8) and rates.dtype == np.float32 and (rates > 0).all()


def test_wrong_input_shape_and_indivisible_heads_are_refused():
    """Verify clear errors for inputs that are not (B, T, N) and for N or T not divisible
    by NUM_HEADS."""
    net = build_model(stndt_cfg(NUM_HEADS=1), num_neurons=7, trial_length=12, max_spikes=4)
    with pytest.raises(ValueError, match="expects"):
        net(torch.zeros(2, 11, 7))
    with pytest.raises(ValueError, match="divisible"):
        build_model(stndt_cfg(NUM_HEADS=2), num_neurons=8, trial_length=13, max_spikes=4)


def test_stndt_config_defaults_and_refusals():
    """Verify that StndtConfig's defaults are our yacs defaults (SPATIAL_ATTENTION on,
    EMBED_DIM 0) and that per-count embeddings wider than 1 are refused."""
    cfg = get_cfg_defaults()
    cfg.MODEL.SPATIAL_ATTENTION, cfg.MODEL.EMBED_DIM = True, 0
    assert stndt_config(cfg.MODEL) == StndtConfig()
    cfg.MODEL.LINEAR_EMBEDDER, cfg.MODEL.SCALE_NORM = True, True
    assert dataclasses.replace(StndtConfig(), linear_embedder=True, scale_norm=True) == \
        stndt_config(cfg.MODEL)
    cfg.MODEL.LINEAR_EMBEDDER, cfg.MODEL.EMBED_DIM = False, 2
    with pytest.raises(NotImplementedError, match="EMBED_DIM"):
        stndt_config(cfg.MODEL)
    ndt = get_cfg_defaults()
    ndt.MODEL.LINEAR_EMBEDDER = True
    with pytest.raises(NotImplementedError, match="LINEAR_EMBEDDER"):
        model_config(ndt.MODEL)  # the NDT still refuses it
    assert isinstance(build_model(stndt_cfg(NUM_HEADS=1), num_neurons=7, trial_length=12,
                                  max_spikes=4), STNDT)
