"""co-bps against the closed-form Poisson log-likelihood, computed here independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nlb_ndt.scoring.metrics import co_bps


def _poisson_ll(rates: np.ndarray, spikes: np.ndarray) -> float:
    """sum of k log(lambda) - lambda - log(k!) over the scored (non-NaN) entries."""
    keep = ~np.isnan(spikes)
    r, k = rates[keep].astype(np.float64), spikes[keep].astype(np.float64)
    log_fact = np.array([math.lgamma(v + 1.0) for v in k])
    return float(np.sum(k * np.log(r) - r - log_fact))


def test_co_bps_equals_closed_form_bits_per_spike():
    """Verify co-bps = (LL(rates) - LL(per-neuron mean rate)) / (n_spikes * ln 2), with NaN
    spikes left out, and that the input rates are not modified."""
    rng = np.random.default_rng(0)
    true = rng.gamma(2.0, 0.3, size=(20, 15, 6))  # rates that vary by trial and bin
    spikes = rng.poisson(true).astype(np.float64)
    spikes[0, :3, 2] = np.nan
    rates = true * rng.uniform(0.8, 1.25, size=true.shape)
    before = rates.copy()
    null = np.nanmean(spikes, axis=(0, 1), keepdims=True) * np.ones_like(spikes)
    want = (_poisson_ll(rates, spikes) - _poisson_ll(null, spikes)) / \
        (np.nansum(spikes) * math.log(2))
    assert co_bps(rates, spikes) == pytest.approx(want, rel=1e-9)
    np.testing.assert_array_equal(rates, before)
    assert co_bps(true, spikes) > 0  # the true rates beat the mean


def test_co_bps_of_the_mean_rate_is_zero():
    """Verify that predicting each neuron's mean count scores exactly 0 bits per spike."""
    spikes = np.random.default_rng(1).poisson(0.7, size=(10, 8, 4)).astype(np.float64)
    null = np.broadcast_to(spikes.mean(axis=(0, 1), keepdims=True), spikes.shape)
    assert co_bps(null, spikes) == pytest.approx(0.0, abs=1e-12)


def test_co_bps_does_not_modify_its_input():
    """Verify that co_bps leaves zero rates in the caller's array alone (nlb_tools edits
    in place)."""
    rng = np.random.default_rng(2)
    rates = rng.uniform(0.1, 1.0, size=(6, 5, 3))
    spikes = rng.poisson(rates).astype(np.float64)
    rates[0, 0, 0] = 0.0
    co_bps(rates, spikes)
    assert rates[0, 0, 0] == 0.0
