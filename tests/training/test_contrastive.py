"""STNDT's contrastive term: NT-Xent by hand, the augmented views, and the loss on a model."""

from __future__ import annotations

import math

import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.config.typed import ContrastConfig, MaskConfig, contrast_config
from nlb_ndt.data.splits import SplitTensors
from nlb_ndt.model.factory import build_model
from nlb_ndt.training.contrastive import (
    contrast_term,
    contrast_views,
    contrastive_loss,
    nt_xent,
)

N_IN, N_OUT, T_OBS, T_FWD = 6, 2, 9, 3


def tiny_stndt(**model) -> torch.nn.Module:
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.SPATIAL_ATTENTION, m.EMBED_DIM, m.NUM_LAYERS, m.HIDDEN_SIZE, m.NUM_HEADS = True, 0, 1, 8, 2
    for key, value in model.items():
        setattr(m, key, value)
    torch.manual_seed(0)
    return build_model(cfg, num_neurons=N_IN + N_OUT, trial_length=T_OBS + T_FWD,
                       max_spikes=6)


def batch(trials: int = 5, seed: int = 0) -> SplitTensors:
    g = torch.Generator().manual_seed(seed)
    return SplitTensors(torch.poisson(torch.full((trials, T_OBS, N_IN), 1.5), generator=g),
                        torch.poisson(torch.full((trials, T_OBS, N_OUT), 1.5), generator=g),
                        torch.poisson(torch.full((trials, T_FWD, N_IN + N_OUT), 1.5),
                                      generator=g))


def test_nt_xent_equals_the_closed_form_of_a_hand_example():
    """Verify NT-Xent on two views of two 2-D vectors against the value worked out by hand.

    Normalised: a1 = (1, 0), a2 = (0, 1), b1 = (1, 1)/sqrt2, b2 = (0, -1); pairs (a1, b1),
    (a2, b2). Cosines: a1.a2 = 0, a1.b1 = 1/sqrt2, a1.b2 = 0, a2.b1 = 1/sqrt2, a2.b2 = -1,
    b1.b2 = -1/sqrt2; divided by tau = 0.5 they double.
    """
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    r2, e = math.sqrt(2.0), math.exp
    terms = [
        -math.log(e(r2) / (e(0) + e(r2) + e(0))),  # a1: others a2, b1 (pair), b2
        -math.log(e(-2) / (e(0) + e(r2) + e(-2))),  # a2: others a1, b1, b2 (pair)
        -math.log(e(r2) / (e(r2) + e(r2) + e(-r2))),  # b1: others a1 (pair), a2, b2
        -math.log(e(-2) / (e(0) + e(-2) + e(-r2))),  # b2: others a1, a2 (pair), b1
    ]
    got = nt_xent(z1, z2, temperature=0.5)
    assert math.isclose(float(got), sum(terms) / 4, rel_tol=1e-6)
    # Scale-free in each vector: only directions count.
    assert math.isclose(float(nt_xent(3 * z1, 0.5 * z2, 0.5)), sum(terms) / 4, rel_tol=1e-6)


def test_identical_views_score_lower_than_unrelated_views():
    """Verify that two identical views give a lower NT-Xent than two unrelated ones."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 16, generator=g)
    other = torch.randn(8, 16, generator=g)
    assert float(nt_xent(z, z, 0.07)) < float(nt_xent(z, other, 0.07))


def test_contrast_views_alter_only_about_the_ratio_of_bins():
    """Verify that each view changes only some observed bins (about the ratio), that the
    two views differ, and that a ratio of 0 leaves the spikes as they are."""
    spikes = batch(trials=200).heldin + 1  # no zeros, so a zeroed bin always shows
    g = torch.Generator().manual_seed(1)
    v1, v2 = contrast_views(spikes, MaskConfig(), ratio=0.2, max_spikes=6, generator=g)
    assert v1.shape == spikes.shape and not torch.equal(v1, v2)
    changed_bins = (v1 != spikes).any(dim=-1).float().mean()
    assert 0.15 < float(changed_bins) < 0.25  # token ratio 1: every masked bin is zeroed
    same, _ = contrast_views(spikes, MaskConfig(), ratio=0.0, max_spikes=6, generator=g)
    assert torch.equal(same, spikes)


def test_embedding_loss_trains_the_linear_embedder():
    """Verify that the loss on the input embedding is finite and reaches the embedder."""
    model = tiny_stndt(LINEAR_EMBEDDER=True)
    b = batch()
    loss = contrast_term(model, b, ContrastConfig(weight=0.5), MaskConfig(), max_spikes=6,
                         generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.embedder[0].weight.grad.abs().sum() > 0
    assert model.src_decoder[0].weight.grad is None  # the embedding never reaches it


def test_contrast_term_is_lambda_times_the_loss_of_its_views():
    """Verify that contrast_term is CONTRAST_LAMBDA times NT-Xent of the views it draws,
    with held-out neurons and forward bins zero in both views."""
    model = tiny_stndt(LINEAR_EMBEDDER=True).eval()
    b, cfg = batch(), ContrastConfig(weight=0.25, mask_ratio=0.3, temperature=0.2)
    with torch.no_grad():
        term = contrast_term(model, b, cfg, MaskConfig(), max_spikes=6,
                             generator=torch.Generator().manual_seed(7))
        v1, v2 = contrast_views(b.heldin, MaskConfig(), ratio=0.3, max_spikes=6,
                                generator=torch.Generator().manual_seed(7))
        full = [torch.zeros(5, T_OBS + T_FWD, N_IN + N_OUT) for _ in range(2)]
        for f, v in zip(full, (v1, v2)):
            f[:, :T_OBS, :N_IN] = v
        want = 0.25 * contrastive_loss(model, *full, temperature=0.2)
    torch.testing.assert_close(term, want)


def test_rates_variant_trains_the_whole_model():
    """Verify the paper's variant (CONTRAST_ON rates): gradients reach the decoder."""
    model = tiny_stndt()
    loss = contrast_term(model, batch(), ContrastConfig(weight=1.0, on="rates"), MaskConfig(),
                         max_spikes=6, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.src_decoder[0].weight.grad.abs().sum() > 0


def test_embedding_loss_without_a_trainable_embedder_is_refused():
    """Verify a clear error when the embedding is the identity (nothing would learn)."""
    model = tiny_stndt(LINEAR_EMBEDDER=False)
    with pytest.raises(ValueError, match="LINEAR_EMBEDDER"):
        contrast_term(model, batch(), ContrastConfig(weight=0.1), MaskConfig(), max_spikes=6,
                      generator=torch.Generator().manual_seed(0))


def test_contrast_config_defaults_and_refusals():
    """Verify the TRAIN.CONTRAST_* defaults (off) and that bad values are refused by name."""
    train = get_cfg_defaults().TRAIN
    assert contrast_config(train) == ContrastConfig()
    assert not ContrastConfig().enabled
    for key, value, match in (("CONTRAST_ON", "latents", "CONTRAST_ON"),
                              ("CONTRAST_TEMPERATURE", 0.0, "TEMPERATURE"),
                              ("CONTRAST_LAMBDA", -1.0, "LAMBDA")):
        node = get_cfg_defaults().TRAIN
        node[key] = value
        with pytest.raises(ValueError, match=match):
            contrast_config(node)
