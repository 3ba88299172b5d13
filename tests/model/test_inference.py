"""Tests for nlb_ndt.model.inference: predict_rates, split_rates and submission_rates."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.datasets import RATE_KEYS as SUBMISSION_KEYS
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.inference import predict_rates, split_rates, submission_rates

N_IN, N_OUT, T_OBS, T_FWD, MAX_SPIKES = 5, 2, 10, 3, 4


def tiny_model(embed_dim: int = 0, seed: int = 0) -> torch.nn.Module:
    """A 2-layer NDT (learned positions, pre-norm, banded context) with random weights."""
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.NUM_LAYERS, m.HIDDEN_SIZE, m.EMBED_DIM = 2, 16, embed_dim
    m.NUM_HEADS = 1 if embed_dim == 0 else 2
    m.LEARNABLE_POSITION, m.PRE_NORM, m.FIXUP_INIT = True, True, True
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD = 2, 3
    cfg.freeze()
    torch.manual_seed(seed)
    model = build_model(cfg, num_neurons=N_IN + N_OUT, trial_length=T_OBS + T_FWD,
                        max_spikes=MAX_SPIKES)
    with torch.no_grad():  # make the decoder sensitive enough that input changes show
        model.decoder[0].weight.mul_(5.0)
    return model


def heldin(trials: int = 9, seed: int = 0, lam: float = 1.5) -> np.ndarray:
    return np.random.default_rng(seed).poisson(lam, (trials, T_OBS, N_IN)).astype(np.int64)


def raw_rates(model: torch.nn.Module, src: np.ndarray) -> np.ndarray:
    """exp(log-rates) of a full (B, T, N) input, computed directly in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.exp(model(torch.as_tensor(src, dtype=torch.float32))[1]).numpy()


@pytest.mark.parametrize("embed_dim", [0, 2])
def test_predict_rates_shape_dtype_and_positive(embed_dim):
    """Verify that rates are float32 (B, T_obs+T_fwd, N_in+N_out), positive and finite."""
    rates = predict_rates(tiny_model(embed_dim), heldin())
    assert rates.shape == (9, T_OBS + T_FWD, N_IN + N_OUT)
    assert rates.dtype == np.float32
    assert np.isfinite(rates).all() and (rates > 0).all()


def test_predict_rates_is_deterministic():
    """Verify that two calls on the same input return identical arrays."""
    model = tiny_model()
    x = heldin()
    np.testing.assert_array_equal(predict_rates(model, x), predict_rates(model, x))


def test_predict_rates_matches_zero_padded_forward():
    """Verify that the model sees held-in counts with held-out neurons and forward bins zeroed."""
    model = tiny_model()
    x = heldin()
    src = np.zeros((9, T_OBS + T_FWD, N_IN + N_OUT), dtype=np.float32)
    src[:, :T_OBS, :N_IN] = np.minimum(x, MAX_SPIKES)
    np.testing.assert_array_equal(predict_rates(model, x), raw_rates(model, src))
    # Filling held-out neurons or forward bins would have changed the output: the test
    # above could fail if predict_rates let anything but zeros in there.
    leaky = src.copy()
    leaky[:, :T_OBS, N_IN:] = 3
    leaky[:, T_OBS:, :] = 2
    assert not np.allclose(raw_rates(model, leaky), raw_rates(model, src))


@pytest.mark.parametrize("embed_dim", [0, 2])
def test_predict_rates_clamps_to_max_spikes(embed_dim):
    """Verify that counts above max_spikes give exactly the output of max_spikes."""
    model = tiny_model(embed_dim)
    x = heldin()
    big = x.copy()
    big[:, 2, 1] = MAX_SPIKES + 7
    big[0, 5, :] = 1000  # would also index past the per-count embedding
    clamped = np.minimum(big, MAX_SPIKES)
    assert not np.array_equal(clamped, x)  # the clamped input differs from the original
    np.testing.assert_array_equal(predict_rates(model, big), predict_rates(model, clamped))
    assert not np.allclose(predict_rates(model, clamped), predict_rates(model, x))


def test_predict_rates_independent_of_batch_size():
    """Verify that batch size changes only float rounding, not the rates."""
    model = tiny_model()
    x = heldin(trials=11)
    ref = predict_rates(model, x, batch_size=256)
    for bs in (1, 4, 11):
        np.testing.assert_allclose(predict_rates(model, x, batch_size=bs), ref,
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_predict_rates_restores_mode_and_grad_state(training):
    """Verify that the model's train/eval mode and global grad mode survive the call."""
    model = tiny_model()
    model.train(training)
    model.decoder.train(not training)  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    rates = predict_rates(model, heldin())
    assert [m.training for m in model.modules()] == before
    assert torch.is_grad_enabled()
    # Dropout was off during the call even though the model was in training mode.
    np.testing.assert_array_equal(rates, predict_rates(model, heldin()))


def test_predict_rates_accepts_float_counts_and_nan(caplog):
    """Verify that whole-count floats work and NaN entries count as 0 with a warning."""
    model = tiny_model()
    x = heldin()
    np.testing.assert_array_equal(predict_rates(model, x.astype(np.float64)),
                                  predict_rates(model, x))
    with_nan = x.astype(np.float32)
    with_nan[0, 3, 2] = np.nan
    zeroed = x.copy()
    zeroed[0, 3, 2] = 0
    with caplog.at_level(logging.WARNING, logger="nlb_ndt.model.inference"):
        out = predict_rates(model, with_nan)
    assert "NaN" in caplog.text
    np.testing.assert_array_equal(out, predict_rates(model, zeroed))


@pytest.mark.parametrize("bad, match", [
    (np.full((2, T_OBS, N_IN), 0.5), "whole spike counts"),
    (np.full((2, T_OBS, N_IN), -1), ">= 0"),
    (np.zeros((T_OBS, N_IN)), "shape"),
    (np.zeros((2, T_OBS + T_FWD + 1, N_IN)), "bins"),
])
def test_predict_rates_rejects_bad_input(bad, match):
    """Verify that non-counts, wrong ranks and oversized inputs raise a clear ValueError."""
    with pytest.raises(ValueError, match=match):
        predict_rates(tiny_model(), bad)


def test_predict_rates_empty_input():
    """Verify that zero trials give an empty array of the right trailing shape."""
    rates = predict_rates(tiny_model(), np.zeros((0, T_OBS, N_IN), dtype=np.int64))
    assert rates.shape == (0, T_OBS + T_FWD, N_IN + N_OUT) and rates.dtype == np.float32


def test_split_rates_slices_bins_and_neurons():
    """Verify that split_rates cuts at t_obs and n_heldin, each piece in place."""
    rates = np.arange(2 * 13 * 7, dtype=np.float32).reshape(2, 13, 7)
    parts = split_rates(rates, n_heldin=N_IN, t_obs=T_OBS)
    assert {k: v.shape for k, v in parts.items()} == {
        "heldin": (2, 10, 5), "heldout": (2, 10, 2),
        "heldin_forward": (2, 3, 5), "heldout_forward": (2, 3, 2)}
    assert parts["heldout"][1, 4, 1] == rates[1, 4, 6]
    assert parts["heldin_forward"][0, 2, 3] == rates[0, 12, 3]
    with pytest.raises(ValueError):
        split_rates(rates, n_heldin=8, t_obs=T_OBS)


def test_submission_rates_six_arrays():
    """Verify that submission_rates returns the six submission arrays with matching values."""
    model = tiny_model()
    train, evl = heldin(trials=6, seed=1), heldin(trials=3, seed=2)
    sub = submission_rates(model, train_heldin=train, eval_heldin=evl, batch_size=4)
    assert tuple(sub) == SUBMISSION_KEYS
    shapes = {k: v.shape for k, v in sub.items()}
    assert shapes == {
        "train_rates_heldin": (6, T_OBS, N_IN), "train_rates_heldout": (6, T_OBS, N_OUT),
        "eval_rates_heldin": (3, T_OBS, N_IN), "eval_rates_heldout": (3, T_OBS, N_OUT),
        "eval_rates_heldin_forward": (3, T_FWD, N_IN),
        "eval_rates_heldout_forward": (3, T_FWD, N_OUT)}
    assert all(v.dtype == np.float32 for v in sub.values())
    full = predict_rates(model, evl)
    np.testing.assert_allclose(sub["eval_rates_heldout_forward"], full[:, T_OBS:, N_IN:],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="same bins"):
        submission_rates(model, train_heldin=train, eval_heldin=train[:, :5])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_rates_cuda_matches_cpu():
    """Verify that CUDA rates match CPU rates within the submission check's rtol=1e-5."""
    model = tiny_model(embed_dim=2)
    x = heldin(trials=20)
    cpu = predict_rates(model, x)
    gpu = predict_rates(model, x, device="cuda")
    assert next(model.parameters()).device.type == "cpu"  # moved back after the call
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)


def test_predict_rates_leaves_the_callers_array_alone():
    """Verify that predict_rates never clamps the caller's array: an ensemble passes one
    array to every member, and a member with a low max_spikes must not clip it for the
    members after it. Each model's rates equal a fresh call on a fresh copy."""
    low, high = tiny_model(seed=1), tiny_model(seed=2)
    low.max_spikes, high.max_spikes = 2, 9
    counts = heldin(lam=3.0).astype(np.float32)  # many counts above 2
    assert counts.max() > 2
    original = counts.copy()
    rates_low = predict_rates(low, counts)
    rates_high = predict_rates(high, counts)
    np.testing.assert_array_equal(counts, original)
    np.testing.assert_array_equal(rates_low, predict_rates(low, original.copy()))
    np.testing.assert_array_equal(rates_high, predict_rates(high, original.copy()))
    # The high-limit model really saw the counts above 2 (so clipping would have shown).
    clipped = np.minimum(original, 2)
    assert not np.array_equal(rates_high, predict_rates(high, clipped))
