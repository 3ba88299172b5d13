"""Baselines and ground truth scored by nlb_tools: true > smoothing > constant."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DATASET, SPEC
from threadpoolctl import threadpool_limits

from nlb_ndt.data import preprocess, synthetic
from nlb_ndt.scoring import baselines


def _cobps(target, group: str, rates: dict) -> dict:
    from nlb_tools.evaluation import evaluate

    with threadpool_limits(limits=1):  # sklearn's small fits crawl with competing threads
        result = evaluate(target, {group: rates})
    return {k.split("] ")[-1]: float(v) for entry in result for m in entry.values()
            for k, v in m.items()}


@pytest.mark.parametrize("bin_ms", [5, 20])
@pytest.mark.slow
def test_baselines_val_score_ordering(nlb_env, bin_ms):
    """Verify that nlb_tools scores true rates > smoothing baseline > constant rates (val)."""
    group = SPEC.group(bin_ms)
    tensors = preprocess.load_tensors(DATASET, phase="val", bin_ms=bin_ms)
    target = preprocess.load_val_target(DATASET, bin_ms=bin_ms)
    true = _cobps(target, group, synthetic.true_rates(nlb_env.data_raw, DATASET, phase="val",
                                                      bin_ms=bin_ms))
    smooth = _cobps(target, group, baselines.smoothing_rates(tensors, bin_ms=bin_ms))
    const = _cobps(target, group, baselines.constant_rates(tensors))
    assert 0.15 < true["co-bps"] < 0.4
    assert true["co-bps"] > smooth["co-bps"] + 0.03
    assert smooth["co-bps"] > const["co-bps"] + 0.03
    assert abs(const["co-bps"]) < 0.05
    assert true["vel R2"] > smooth["vel R2"]


@pytest.mark.slow
def test_baselines_test_phase_ground_truth(nlb_env):
    """Verify that eval_data_test.h5 scores the true test-phase rates through evaluate."""
    group = SPEC.group(5)
    target = str(nlb_env.eval_data_test)
    true = _cobps(target, group, synthetic.true_rates(nlb_env.data_raw, DATASET, phase="test"))
    smooth = _cobps(target, group, baselines.smoothing_rates(
        preprocess.load_tensors(DATASET, phase="test")))
    assert true["co-bps"] > 0.15 and true["psth R2"] > 0.3 and true["vel R2"] > 0.4
    assert true["co-bps"] > smooth["co-bps"] + 0.03


@pytest.mark.slow
def test_baselines_shapes_and_values(nlb_env):
    """Verify the six arrays: submission shapes, float32, finite and positive."""
    tensors = preprocess.load_tensors(DATASET, phase="test")
    n_train, n_eval = 100, 100
    shapes = {
        "train_rates_heldin": (n_train, 140, 107), "train_rates_heldout": (n_train, 140, 35),
        "eval_rates_heldin": (n_eval, 140, 107), "eval_rates_heldout": (n_eval, 140, 35),
        "eval_rates_heldin_forward": (n_eval, 40, 107),
        "eval_rates_heldout_forward": (n_eval, 40, 35),
    }
    for rates in (baselines.smoothing_rates(tensors), baselines.constant_rates(tensors)):
        assert {k: v.shape for k, v in rates.items()} == shapes
        for key, arr in rates.items():
            assert arr.dtype == np.float32, key
            assert np.all(np.isfinite(arr)) and np.all(arr > 0), key
    const = baselines.constant_rates(tensors)
    np.testing.assert_allclose(const["eval_rates_heldout"][3, 7],
                               tensors["train_spikes_heldout"].mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(const["eval_rates_heldin_forward"][0, 0],
                               tensors["train_spikes_heldin_forward"].mean(axis=(0, 1)),
                               rtol=1e-5)
