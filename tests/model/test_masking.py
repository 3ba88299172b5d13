"""Masking tests: ratios, spans, labels and the assembled model input."""

from __future__ import annotations

import math

import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.config.typed import mask_config
from nlb_ndt.model.masking import assemble, mask_heldin, span_probability, timestep_mask
from nlb_ndt.model.ndt import IGNORE_INDEX


def train_cfg(**kw):
    cfg = get_cfg_defaults().TRAIN
    cfg.MASK_RATIO, cfg.MASK_TOKEN_RATIO, cfg.MASK_RANDOM_RATIO = 0.25, 0.8, 0.5
    for k, v in kw.items():
        setattr(cfg, k, v)
    return mask_config(cfg)


def test_masking_statistics_match_configured_ratios():
    """Verify that masked-bin, mask-token and random-replacement frequencies match the config."""
    g = torch.Generator().manual_seed(0)
    spikes = torch.full((400, 50, 20), 7.0)  # constant, so kept vs replaced is visible
    inputs, labels = mask_heldin(spikes, train_cfg(), epoch=0, max_spikes=10, generator=g)
    masked = labels != IGNORE_INDEX
    # Whole time steps are masked: every neuron of a bin shares the decision.
    assert (masked.all(-1) == masked.any(-1)).all()
    assert math.isclose(masked.float().mean().item(), 0.25, abs_tol=0.01)
    token = (inputs == 0) & masked
    # Zeros come from the token (0.8) and from random draws of 0 in [0, 7) (0.2*0.5/7).
    assert math.isclose(token.sum().item() / masked.sum().item(), 0.8 + 0.1 / 7, abs_tol=0.01)
    changed = (inputs != 7) & masked & ~token
    # Random counts are drawn from [0, 7): P(change | not token) = 0.5 * 6/7 (0 counts as
    # a token only when drawn by the token rule; random zeros are "changed" too).
    rest = masked & ~token
    assert (labels[masked] == 7).all()
    # Of the non-zero masked entries, half got a random count in 1..6 (6 of 7 values).
    frac = changed.sum().item() / rest.sum().item()
    assert math.isclose(frac, (0.5 * 6 / 7) / (1 - 0.5 / 7), abs_tol=0.02)
    assert (inputs[~masked] == 7).all()  # unmasked bins untouched


def test_spans_widen_masks_and_ramp_in():
    """Verify the span ramp (0 before start, 1 after end) and that widened masks are contiguous."""
    assert span_probability(5, max_span=4, ramp_start=10, ramp_end=20) == 0.0
    assert span_probability(15, max_span=4, ramp_start=10, ramp_end=20) == 0.5
    assert span_probability(25, max_span=4, ramp_start=10, ramp_end=20) == 1.0
    assert span_probability(25, max_span=1, ramp_start=10, ramp_end=20) == 0.0
    g = torch.Generator().manual_seed(0)
    mask = timestep_mask(200, 40, 0.05, 3, generator=g, device="cpu")
    assert mask.shape == (200, 40)
    runs = []
    for row in mask.int().tolist():
        run = 0
        for v in row + [0]:
            if v:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    # Isolated hits widen to 3 bins (edges may clip to 2; overlaps make longer runs).
    assert min(runs) >= 2 and sum(r == 3 for r in runs) > len(runs) / 2


def test_all_zero_batch_does_not_break_random_replacement():
    """Verify that masking a batch with no spikes works (the original's randint failed)."""
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_heldin(torch.zeros(4, 10, 3), train_cfg(MASK_TOKEN_RATIO=0.5),
                                 epoch=0, max_spikes=3, generator=g)
    assert (inputs == 0).all()


def test_assemble_zeroes_heldout_and_forward_and_labels_them():
    """Verify the input hides held-out/forward counts while labels carry them (NaN ignored)."""
    heldin = torch.ones(2, 4, 3)
    heldout = torch.full((2, 4, 2), 2.0)
    heldout[0, 0, 0] = float("nan")
    forward = torch.full((2, 3, 5), 3.0)
    lab = torch.full_like(heldin, IGNORE_INDEX)
    inputs, labels = assemble(heldin, lab, heldout, forward)
    assert inputs.shape == (2, 7, 5)
    assert (inputs[:, :4, 3:] == 0).all() and (inputs[:, 4:] == 0).all()
    assert (inputs[:, :4, :3] == 1).all()
    assert labels[0, 0, 3] == IGNORE_INDEX and labels[1, 0, 3] == 2
    assert (labels[:, 4:] == 3).all()
    _, unmasked = assemble(heldin, heldin, heldout, forward, heldout_labels=False)
    assert (unmasked[:, :4, 3:] == IGNORE_INDEX).all() and (unmasked[:, 4:] == IGNORE_INDEX).all()
    _, legacy = assemble(heldin, heldin, heldout, forward, heldout_labels="legacy")
    # The original's bug: zeros scored for held-out neurons except the first one.
    assert (legacy[:, :4, 3] == IGNORE_INDEX).all() and (legacy[:, :4, 4] == 0).all()
