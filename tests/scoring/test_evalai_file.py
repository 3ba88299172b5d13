"""The submission file (nlb_ndt.scoring.evalai_file): expected shapes, writing, reading, checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from helpers import DATASET, N_EVAL, N_TRAIN
from helpers import make_rates as _rates
from helpers import make_target as _target

from nlb_ndt.datasets import RATE_KEYS
from nlb_ndt.scoring.evalai_file import (
    SubmissionError,
    build_submission,
    group_shapes,
    read_submission,
    trial_counts,
    write_submission,
)


def test_group_shapes_follow_the_table_and_bin_size():
    """Verify that expected shapes come from the dataset table, in bins of the bin size."""
    shapes = group_shapes("mc_maze", bin_ms=20, n_train=3, n_eval=2)
    assert shapes["train_rates_heldin"] == (3, 35, 137)
    assert shapes["eval_rates_heldout_forward"] == (2, 10, 45)
    assert group_shapes("dmfc_rsg")["eval_rates_heldout"] == (None, 300, 14)


def test_trial_counts_from_tensors_and_targets():
    """Verify that trial and neuron counts are read from tensor dicts and target groups."""
    tensors = {"train_spikes_heldin": np.zeros((7, 4, 3)),
               "train_spikes_heldout": np.zeros((7, 4, 2)),
               "eval_spikes_heldin": np.zeros((5, 4, 3))}
    assert trial_counts(tensors) == {"n_train": 7, "n_heldin": 3, "n_heldout": 2, "n_eval": 5}
    target = _target(DATASET)
    assert trial_counts(target) == {"n_train": N_TRAIN, "n_eval": N_EVAL, "n_heldout": 35,
                                    "n_heldin": 107}


def test_write_submission_round_trips_as_float32(tmp_path):
    """Verify that a written file holds the six arrays as float32 with the values given."""
    rates = _rates(DATASET)
    data = build_submission({DATASET: {**rates, "extra": np.zeros(3)}})
    path = write_submission(data, tmp_path / "sub" / "submission.h5")
    with h5py.File(path, "r") as f:
        assert sorted(f[DATASET]) == sorted(RATE_KEYS)
        assert all(f[DATASET][k].dtype == np.float32 for k in RATE_KEYS)
    back = read_submission(path)
    for key in RATE_KEYS:
        np.testing.assert_array_equal(back[DATASET][key], rates[key].astype(np.float32))
    assert not list(tmp_path.glob("sub/.*tmp"))  # no temporary left behind


def test_write_submission_refuses_to_overwrite_without_flag(tmp_path):
    """Verify that an existing file is kept unless overwrite is set."""
    path = tmp_path / "s.h5"
    data = build_submission({DATASET: _rates(DATASET)})
    write_submission(data, path)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_submission(data, path)
    assert path.stat().st_mtime_ns == stamp
    write_submission(build_submission({DATASET: _rates(DATASET, seed=5)}),
                     path, overwrite=True)
    assert read_submission(path)[DATASET]["eval_rates_heldin"][0, 0, 0] == \
        pytest.approx(_rates(DATASET, seed=5)["eval_rates_heldin"][0, 0, 0], rel=1e-6)


def _corrupt(f: h5py.File, case: str) -> None:
    g = f[DATASET]
    if case == "missing group":
        del f[DATASET]
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
    ("nan", r"mc_maze_small/train_rates_heldout contains 1 NaN values "
            r"\(first at index \(1, 2, 3\)\)"),
    ("inf", r"mc_maze_small/train_rates_heldout contains 1 infinite values"),
    ("negative", r"mc_maze_small/train_rates_heldout contains 1 negative rates \(min -0.5\)"),
    ("integer dtype", r"mc_maze_small/eval_rates_heldin has dtype int32; rates must be floating"),
    ("group as array", r"mc_maze_small/eval_rates_heldin is a group"),
])
def test_read_submission_reports_each_bad_file_in_one_line(tmp_path, case, pattern):
    """Verify that each malformed file gets one line naming the file, array and problem."""
    path = write_submission(build_submission({DATASET: _rates(DATASET)}),
                            tmp_path / "bad.h5")
    with h5py.File(path, "a") as f:
        _corrupt(f, case)
    expected = {DATASET: group_shapes(DATASET, n_train=N_TRAIN, n_eval=N_EVAL)}
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
    rates = _rates(DATASET)
    rates["train_rates_heldin"] = rates["train_rates_heldin"][..., :-1]
    with pytest.raises(SubmissionError, match="train_rates_heldin has shape"):
        build_submission({DATASET: rates})
