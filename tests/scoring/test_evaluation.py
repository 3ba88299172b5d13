"""Scoring a submission with nlb_tools (nlb_ndt.scoring.evaluation.score_submission), the score
table, and comparing two outputs array by array (compare_outputs, format_comparison)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DATASET
from helpers import make_rates as _rates
from helpers import make_target as _target

from nlb_ndt.scoring.evalai_file import SubmissionError, build_submission, write_submission
from nlb_ndt.scoring.evaluation import (
    compare_outputs,
    format_comparison,
    format_scores,
    score_submission,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_written_file_scores_with_nlb_evaluate(tmp_path):
    """Verify that a written file is accepted by nlb_tools' evaluate and scores sensibly."""
    target = _target(DATASET)
    rates = _rates(DATASET)
    # Rates that are the mean of the eval spikes per neuron score exactly 0 co-bps.
    null = target["eval_spikes_heldout"].mean(axis=(0, 1), keepdims=True)
    rates["eval_rates_heldout"] = np.broadcast_to(null, rates["eval_rates_heldout"].shape)
    path = write_submission(build_submission({DATASET: rates}), tmp_path / "s.h5")
    (row,) = score_submission({DATASET: target}, str(path))
    assert row["dataset"] == DATASET and row["bin_ms"] == 5
    assert row["co-bps"] == pytest.approx(0.0, abs=1e-5)
    assert {"vel R2", "fp-bps"} <= set(row)
    table = format_scores([row])
    assert "co-bps" in table and DATASET in table and "0.0000" in table


def test_score_submission_splits_scaling_datasets_into_rows():
    """Verify that the scorer's '[500] ' / '[250] ' / '[100] ' keys become one row each."""
    groups = ("mc_maze_large", "mc_maze_medium", DATASET)
    targets = {g: _target(g, seed=i) for i, g in enumerate(groups)}
    subs = {g: _rates(g, seed=i) for i, g in enumerate(groups)}
    rows = score_submission(targets, subs)
    assert [r["dataset"] for r in rows] == list(groups)
    assert all({"co-bps", "vel R2", "fp-bps"} <= set(r) for r in rows)


def test_score_submission_checks_trials_against_target():
    """Verify that a submission whose trial count differs from the target's is refused."""
    target = _target(DATASET)
    rates = _rates(DATASET)
    rates["eval_rates_heldout"] = rates["eval_rates_heldout"][:-1]
    with pytest.raises(SubmissionError, match=r"eval_rates_heldout has shape \(5, 140, 35\); "
                                              r"expected \(6, 140, 35\)"):
        score_submission({DATASET: target}, {DATASET: rates})
    with pytest.raises(SubmissionError, match="target: group 'mc_maze_small' is missing"):
        score_submission({"mc_rtt": target}, {DATASET: _rates(DATASET)})


def test_compare_outputs_reports_largest_difference_per_array():
    """Verify that compare_outputs applies rtol per element and reports max abs/rel diffs."""
    a = {"g": {"x": np.array([1.0, 2.0, np.nan], np.float32), "y": np.ones(3, np.float32)}}
    b = {"g": {"x": np.array([1.0, 2.0 * (1 + 5e-6), np.nan], np.float32),
               "y": np.array([1.0, 1.001, 1.0], np.float32)}}
    diffs = {d.name: d for d in compare_outputs(a, b, rtol=1e-5)}
    assert diffs["g/x"].ok and diffs["g/x"].n_bad == 0
    assert not diffs["g/y"].ok and diffs["g/y"].n_bad == 1
    assert diffs["g/y"].max_abs == pytest.approx(0.001, rel=1e-3)
    assert diffs["g/y"].max_rel == pytest.approx(0.001 / 1.001, rel=1e-3)
    report = format_comparison(list(diffs.values()))
    assert "FAIL g/y" in report and "ok   g/x" in report


def test_compare_outputs_flags_missing_arrays_shapes_and_one_sided_nan():
    """Verify that missing arrays, shape mismatches and one-sided NaN are all mismatches."""
    diffs = {d.name: d for d in compare_outputs(
        {"a": np.ones(3), "b": np.ones(2), "c": np.array([1.0, np.nan])},
        {"a": np.ones(4), "c": np.array([1.0, 1.0]), "d": np.ones(1)})}
    assert not diffs["a"].ok and "shape" in diffs["a"].note
    assert not diffs["b"].ok and "missing from desired" in diffs["b"].note
    assert not diffs["d"].ok and "missing from actual" in diffs["d"].note
    assert not diffs["c"].ok and diffs["c"].n_bad == 1
