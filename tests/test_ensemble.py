"""Mean-of-rates ensembles and the ensemble-size sweep (nlb_ndt.ensemble; pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from nlb_ndt.ensemble import (RunningMean, choose_size, co_bps, ensemble_curve, mean_rates)


def _truth(seed: int = 0, shape=(40, 30, 12)):
    """Smooth true rates (spikes/bin) and Poisson spikes drawn from them."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, shape[1])[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (shape[0], 1, shape[2]))
    rates = 0.3 + 0.25 * (1 + np.sin(t + phase))
    return rates, rng.poisson(rates).astype(np.float64)


def _noisy_members(rates, n: int, seed: int = 1, sigma: float = 0.5):
    """Independently noisy copies of the true rates: genuinely different 'models'."""
    rng = np.random.default_rng(seed)
    return [(rates * np.exp(sigma * rng.standard_normal(rates.shape))).astype(np.float32)
            for _ in range(n)]


def test_mean_rates_averages_each_array_as_float32():
    """Verify that mean_rates averages key by key and returns float32."""
    a = {"x": np.full((2, 3), 1.0, np.float32), "y": np.zeros((1, 2), np.float32)}
    b = {"x": np.full((2, 3), 2.0, np.float32), "y": np.ones((1, 2), np.float32)}
    c = {"x": np.full((2, 3), 6.0, np.float32), "y": np.full((1, 2), 2.0, np.float32)}
    out = mean_rates([a, b, c])
    assert out["x"].dtype == np.float32 and out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], np.full((2, 3), 3.0))
    np.testing.assert_array_equal(out["y"], np.ones((1, 2)))


def test_running_mean_matches_stacked_mean_and_copies_first_member():
    """Verify that the streamed mean equals np.mean of the stack and never aliases a member."""
    members = _noisy_members(_truth()[0], 5)
    running = RunningMean()
    for m in members:
        running.add({"r": m})
    first = members[0].copy()
    out = running.mean()["r"]
    np.testing.assert_allclose(out, np.stack(members).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(members[0], first)
    assert running.count == 5


def test_running_mean_rejects_mismatched_members():
    """Verify that a member with another shape or other keys is refused by name."""
    running = RunningMean()
    running.add({"r": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="r has shape"):
        running.add({"r": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="arrays"):
        running.add({"q": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="at least one member"):
        RunningMean().mean()


def test_ensemble_curve_equals_co_bps_of_each_top_n_mean():
    """Verify that curve[N-1] is the co-bps of the float32 mean of the first N members."""
    rates, spikes = _truth()
    members = _noisy_members(rates, 6)
    curve = ensemble_curve(iter(members), spikes)
    assert curve.shape == (6,)
    for n in (1, 3, 6):
        direct = co_bps(np.mean(np.stack(members[:n]).astype(np.float64), axis=0)
                        .astype(np.float32), spikes)
        assert curve[n - 1] == pytest.approx(direct, abs=1e-9)


def test_ensemble_curve_stops_at_max_size_and_checks_shapes():
    """Verify that max_size caps the sweep and a wrongly shaped member is refused."""
    rates, spikes = _truth()
    members = _noisy_members(rates, 6)
    assert ensemble_curve(members, spikes, max_size=4).shape == (4,)
    with pytest.raises(ValueError, match="member 2"):
        ensemble_curve([members[0], members[1][:, :-1]], spikes)


def test_choose_size_takes_argmax_smallest_on_ties_and_skips_nan():
    """Verify that choose_size returns the 1-based argmax, the smallest N on ties, no NaN."""
    assert choose_size(np.array([0.10, 0.30, 0.25])) == 2
    assert choose_size(np.array([0.10, 0.30, 0.30, 0.2])) == 2
    assert choose_size(np.array([np.nan, 0.1, 0.05])) == 2
    with pytest.raises(ValueError):
        choose_size(np.array([np.nan, np.nan]))


def test_ensemble_of_noisy_models_beats_best_single_and_argmax_is_chosen():
    """Verify that averaging independent models raises val co-bps above the best single."""
    rates, spikes = _truth(seed=3)
    members = _noisy_members(rates, 12, seed=4)
    members.sort(key=lambda m: co_bps(m, spikes), reverse=True)  # rank by co-bps
    curve = ensemble_curve(members, spikes)
    n = choose_size(curve)
    assert curve[n - 1] == curve.max()
    assert n > 1
    assert curve[n - 1] > curve[0] + 0.01


def test_co_bps_does_not_modify_its_input():
    """Verify that co_bps leaves zero rates in the caller's array alone (nlb_tools edits in place)."""
    rates, spikes = _truth()
    rates = rates.copy()
    rates[0, 0, 0] = 0.0
    co_bps(rates, spikes)
    assert rates[0, 0, 0] == 0.0
