"""The submission file (nlb_ndt.submission) and its scoring / comparison (nlb_ndt.evaluation)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from nlb_ndt.datasets import RATE_KEYS, get_spec, parse_group
from nlb_ndt.evaluation import (compare_outputs, format_comparison, format_scores,
                                score_submission)
from nlb_ndt.submission import (SubmissionError, build_submission, group_shapes, read_submission,
                                trial_counts, write_submission)

N_TRAIN, N_EVAL = 12, 6



pytestmark = pytest.mark.usefixtures("one_blas_thread")

def _rates(dataset: str, seed: int = 0, bin_ms: int = 5) -> dict[str, np.ndarray]:
    """Six valid float64 rate arrays shaped for `dataset` (small trial counts)."""
    rng = np.random.default_rng(seed)
    shapes = group_shapes(dataset, bin_ms=bin_ms, n_train=N_TRAIN, n_eval=N_EVAL)
    return {k: rng.uniform(0.05, 1.0, shape) for k, shape in shapes.items()}


def _target(dataset: str, seed: int = 1) -> dict[str, np.ndarray]:
    """A minimal ground-truth group in make_eval_target_tensors' layout (no PSTH)."""
    rng = np.random.default_rng(seed)
    spec = get_spec(dataset)
    t_obs, t_fwd = spec.bins(5)
    return {
        "eval_spikes_heldout": rng.poisson(0.5, (N_EVAL, t_obs, spec.n_heldout)).astype("f4"),
        "eval_spikes_heldin_forward": rng.poisson(0.5, (N_EVAL, t_fwd, spec.n_heldin)).astype("f4"),
        "eval_spikes_heldout_forward": rng.poisson(0.5, (N_EVAL, t_fwd, spec.n_heldout)).astype("f4"),
        "train_behavior": rng.standard_normal((N_TRAIN, t_obs, 2)).astype("f4"),
        "eval_behavior": rng.standard_normal((N_EVAL, t_obs, 2)).astype("f4"),
    }


def test_parse_group_reads_dataset_and_bin():
    """Verify that group names map to (dataset, bin_ms) and unknown names are refused."""
    assert parse_group("mc_maze") == ("mc_maze", 5)
    assert parse_group("mc_maze_small_20") == ("mc_maze_small", 20)
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_group("mc_mice")


def test_group_shapes_follow_the_table_and_bin_size():
    """Verify that expected shapes come from the dataset table, in bins of the bin size."""
    shapes = group_shapes("mc_maze", bin_ms=20, n_train=3, n_eval=2)
    assert shapes["train_rates_heldin"] == (3, 35, 137)
    assert shapes["eval_rates_heldout_forward"] == (2, 10, 45)
    assert group_shapes("dmfc_rsg")["eval_rates_heldout"] == (None, 300, 14)


def test_trial_counts_from_tensors_and_targets():
    """Verify that trial and neuron counts are read from tensor dicts and target groups."""
    tensors = {"train_spikes_heldin": np.zeros((7, 4, 3)), "train_spikes_heldout": np.zeros((7, 4, 2)),
               "eval_spikes_heldin": np.zeros((5, 4, 3))}
    assert trial_counts(tensors) == {"n_train": 7, "n_heldin": 3, "n_heldout": 2, "n_eval": 5}
    target = _target("mc_maze_small")
    assert trial_counts(target) == {"n_train": N_TRAIN, "n_eval": N_EVAL, "n_heldout": 35,
                                    "n_heldin": 107}


def test_write_submission_round_trips_as_float32(tmp_path):
    """Verify that a written file holds the six arrays as float32 with the values given."""
    rates = _rates("mc_maze_small")
    data = build_submission({"mc_maze_small": {**rates, "extra": np.zeros(3)}})
    path = write_submission(data, tmp_path / "sub" / "submission.h5")
    with h5py.File(path, "r") as f:
        assert sorted(f["mc_maze_small"]) == sorted(RATE_KEYS)
        assert all(f["mc_maze_small"][k].dtype == np.float32 for k in RATE_KEYS)
    back = read_submission(path)
    for key in RATE_KEYS:
        np.testing.assert_array_equal(back["mc_maze_small"][key], rates[key].astype(np.float32))
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temporary left behind


def test_write_submission_refuses_to_overwrite_without_flag(tmp_path):
    """Verify that an existing file is kept unless overwrite is set."""
    path = tmp_path / "s.h5"
    data = build_submission({"mc_maze_small": _rates("mc_maze_small")})
    write_submission(data, path)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_submission(data, path)
    assert path.stat().st_mtime_ns == stamp
    write_submission(build_submission({"mc_maze_small": _rates("mc_maze_small", seed=5)}),
                     path, overwrite=True)
    assert read_submission(path)["mc_maze_small"]["eval_rates_heldin"][0, 0, 0] == \
        pytest.approx(_rates("mc_maze_small", seed=5)["eval_rates_heldin"][0, 0, 0], rel=1e-6)


def _corrupt(f: h5py.File, case: str) -> None:
    g = f["mc_maze_small"]
    if case == "missing group":
        del f["mc_maze_small"]
        f.create_group("mc_rtt")
    elif case == "missing array":
        del g["eval_rates_heldout"]
    elif case == "wrong shape":
        del g["eval_rates_heldout"]
        g["eval_rates_heldout"] = np.ones((N_EVAL, 140, 34), np.float32)
    elif case == "wrong bins":
        del g["eval_rates_heldin_forward"]
        g["eval_rates_heldin_forward"] = np.ones((N_EVAL, 10, 107), np.float32)
    elif case in ("nan", "inf", "negative"):
        arr = g["train_rates_heldout"][()]
        arr[1, 2, 3] = {"nan": np.nan, "inf": np.inf, "negative": -0.5}[case]
        g["train_rates_heldout"][...] = arr
    elif case == "integer dtype":
        del g["eval_rates_heldin"]
        g["eval_rates_heldin"] = np.ones((N_EVAL, 140, 107), np.int32)
    elif case == "group as array":
        del g["eval_rates_heldin"]
        g.create_group("eval_rates_heldin")


@pytest.mark.parametrize("case, pattern", [
    ("missing group", r"group 'mc_maze_small' is missing \(groups present: mc_rtt\)"),
    ("missing array", r"mc_maze_small/eval_rates_heldout is missing"),
    ("wrong shape", r"mc_maze_small/eval_rates_heldout has shape \(6, 140, 34\); "
                    r"expected \(6, 140, 35\)"),
    ("wrong bins", r"mc_maze_small/eval_rates_heldin_forward has shape \(6, 10, 107\); "
                   r"expected \(6, 40, 107\)"),
    ("nan", r"mc_maze_small/train_rates_heldout contains 1 NaN values \(first at index \(1, 2, 3\)\)"),
    ("inf", r"mc_maze_small/train_rates_heldout contains 1 infinite values"),
    ("negative", r"mc_maze_small/train_rates_heldout contains 1 negative rates \(min -0.5\)"),
    ("integer dtype", r"mc_maze_small/eval_rates_heldin has dtype int32; rates must be floating"),
    ("group as array", r"mc_maze_small/eval_rates_heldin is a group"),
])
def test_read_submission_reports_each_bad_file_in_one_line(tmp_path, case, pattern):
    """Verify that each malformed file gets one line naming the file, array and problem."""
    path = write_submission(build_submission({"mc_maze_small": _rates("mc_maze_small")}),
                            tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        _corrupt(f, case)
    expected = {"mc_maze_small": group_shapes("mc_maze_small", n_train=N_TRAIN, n_eval=N_EVAL)}
    with pytest.raises(SubmissionError, match=pattern) as info:
        read_submission(path, expected=expected)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))


def test_read_submission_names_missing_and_non_hdf5_files(tmp_path):
    """Verify that a missing file and a non-HDF5 file are one-line errors naming the path."""
    with pytest.raises(SubmissionError, match="does not exist"):
        read_submission(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(SubmissionError, match="not a readable HDF5 file"):
        read_submission(junk)


def test_build_submission_checks_shapes_before_writing():
    """Verify that rates of the wrong neuron count are refused before any file is written."""
    rates = _rates("mc_maze_small")
    rates["train_rates_heldin"] = rates["train_rates_heldin"][..., :-1]
    with pytest.raises(SubmissionError, match="train_rates_heldin has shape"):
        build_submission({"mc_maze_small": rates})


def test_written_file_scores_with_nlb_evaluate(tmp_path):
    """Verify that a written file is accepted by nlb_tools' evaluate and scores sensibly."""
    target = _target("mc_maze_small")
    rates = _rates("mc_maze_small")
    # Rates that are the mean of the eval spikes per neuron score exactly 0 co-bps.
    null = target["eval_spikes_heldout"].mean(axis=(0, 1), keepdims=True)
    rates["eval_rates_heldout"] = np.broadcast_to(null, rates["eval_rates_heldout"].shape)
    path = write_submission(build_submission({"mc_maze_small": rates}), tmp_path / "s.h5")
    (row,) = score_submission({"mc_maze_small": target}, str(path))
    assert row["dataset"] == "mc_maze_small" and row["bin_ms"] == 5
    assert row["co-bps"] == pytest.approx(0.0, abs=1e-5)
    assert {"vel R2", "fp-bps"} <= set(row)
    table = format_scores([row])
    assert "co-bps" in table and "mc_maze_small" in table and "0.0000" in table


def test_score_submission_splits_scaling_datasets_into_rows():
    """Verify that the scorer's '[500] ' / '[250] ' / '[100] ' keys become one row each."""
    groups = ("mc_maze_large", "mc_maze_medium", "mc_maze_small")
    targets = {g: _target(g, seed=i) for i, g in enumerate(groups)}
    subs = {g: _rates(g, seed=i) for i, g in enumerate(groups)}
    rows = score_submission(targets, subs)
    assert [r["dataset"] for r in rows] == list(groups)
    assert all({"co-bps", "vel R2", "fp-bps"} <= set(r) for r in rows)


def test_score_submission_checks_trials_against_target():
    """Verify that a submission whose trial count differs from the target's is refused."""
    target = _target("mc_maze_small")
    rates = _rates("mc_maze_small")
    rates["eval_rates_heldout"] = rates["eval_rates_heldout"][:-1]
    with pytest.raises(SubmissionError, match=r"eval_rates_heldout has shape \(5, 140, 35\); "
                                              r"expected \(6, 140, 35\)"):
        score_submission({"mc_maze_small": target}, {"mc_maze_small": rates})
    with pytest.raises(SubmissionError, match="target: group 'mc_maze_small' is missing"):
        score_submission({"mc_rtt": target}, {"mc_maze_small": _rates("mc_maze_small")})


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
