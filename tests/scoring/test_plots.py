"""The submission stage's figures: each writes a PNG, none touches pyplot's global state."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from nlb_ndt.scoring.plots import plot_ensemble_curve, plot_rates_vs_truth, plot_search


@pytest.fixture(autouse=True)
def _backend_unchanged():
    """Every test here also checks that matplotlib's global backend is left as it was."""
    before = matplotlib.get_backend()
    yield
    assert matplotlib.get_backend() == before


def _png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, path
    assert not list(path.parent.glob(".*tmp*"))  # the atomic write left nothing behind


def test_plot_ensemble_curve_with_and_without_greedy(tmp_path):
    """Verify the top-N curve alone and with a greedy curve (chosen on it) each write a PNG."""
    curve = [0.20, 0.24, 0.26, 0.25]
    out = plot_ensemble_curve(curve, tmp_path / "plain.png", chosen=3, argmax=3, title="t")
    assert out == tmp_path / "plain.png"
    _png(out)
    greedy = [0.20, 0.25, 0.27, 0.27, 0.28]
    _png(plot_ensemble_curve(curve, tmp_path / "greedy.png", chosen=5, argmax=3,
                             greedy=greedy, method="greedy"))


def test_plot_search_handles_missing_metrics(tmp_path):
    """Verify a PNG for trials where some lack a metric (NaN) or have only one of them."""
    trials = [{"best_masked_loss": 0.5, "best_val_cobps": 0.1},
              {"best_masked_loss": 0.45},
              {"best_masked_loss": float("nan"), "best_val_cobps": 0.2}]
    _png(plot_search(trials, tmp_path / "search.png", objective="best_val_cobps"))


def test_plot_rates_vs_truth_with_forward_bins(tmp_path):
    """Verify a PNG of predicted against true rates, observed and forward bins."""
    rng = np.random.default_rng(0)
    true = {"eval_rates_heldin": rng.gamma(2, 0.1, (3, 20, 5)),
            "eval_rates_heldout": rng.gamma(2, 0.1, (3, 20, 4)),
            "eval_rates_heldin_forward": rng.gamma(2, 0.1, (3, 6, 5)),
            "eval_rates_heldout_forward": rng.gamma(2, 0.1, (3, 6, 4))}
    pred = {k: v * rng.uniform(0.8, 1.2, v.shape) for k, v in true.items()}
    _png(plot_rates_vs_truth(pred, true, tmp_path / "rates.png", n_neurons=2, trial=1,
                             bin_ms=20))
