"""NWB -> nlb_tools tensors -> cached h5: equality with nlb_tools, reuse, rebuild, errors."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DATASET, SPEC

from nlb_ndt.data import preprocess
from nlb_ndt.paths import get_paths


@pytest.fixture(scope="module")
def nlb_dataset(synthetic_home):
    """The synthetic files loaded by nlb_tools itself at 5 ms (module-wide: ~2 s to load)."""
    from nlb_tools.nwb_interface import NWBDataset

    ds = NWBDataset(str(synthetic_home / "raw" / SPEC.folder))
    ds.resample(5)
    return ds


def test_preprocess_paths_follow_contract(nlb_env):
    """Verify the cache file names for both phases and bin sizes."""
    cache = nlb_env.ndt_cache_dir
    assert preprocess.tensor_path(DATASET, phase="val") == cache / "mc_maze_small_train.h5"
    test20 = preprocess.tensor_path(DATASET, phase="test", bin_ms=20)
    assert test20 == cache / "mc_maze_small_20_test.h5"
    assert preprocess.target_path(DATASET, bin_ms=20) == cache / "mc_maze_small_20_val_target.h5"
    with pytest.raises(ValueError, match="phase"):
        preprocess.tensor_path(DATASET, phase="train")


@pytest.mark.slow
def test_preprocess_val_tensors_equal_nlb_tools(nlb_env, nlb_dataset):
    """Verify that the cached val-phase tensors and targets equal nlb_tools' own output."""
    from nlb_tools.make_tensors import (
        make_eval_input_tensors,
        make_eval_target_tensors,
        make_train_input_tensors,
    )

    cached = preprocess.load_tensors(DATASET, phase="val")
    expected = make_train_input_tensors(nlb_dataset, DATASET, trial_split="train",
                                        include_forward_pred=True, save_file=False)
    expected.update(make_eval_input_tensors(nlb_dataset, DATASET, trial_split="val",
                                            save_file=False))
    target = make_eval_target_tensors(nlb_dataset, DATASET, "train", "val",
                                      save_file=False)[DATASET]
    expected["eval_spikes_heldin_forward"] = target["eval_spikes_heldin_forward"]
    expected["eval_spikes_heldout_forward"] = target["eval_spikes_heldout_forward"]
    assert set(cached) == set(expected)
    for key, arr in expected.items():
        assert cached[key].dtype == np.float32
        np.testing.assert_array_equal(cached[key], arr.astype(np.float32), err_msg=key)
    assert cached["train_spikes_heldin"].shape == (75, 140, 107)
    assert cached["eval_spikes_heldout"].shape == (25, 140, 35)

    cached_target = preprocess.load_val_target(DATASET)[DATASET]
    for key in ("eval_spikes_heldout", "train_behavior", "eval_behavior"):
        np.testing.assert_allclose(cached_target[key], target[key].astype(np.float32),
                                   err_msg=key)
    assert {"psth", "eval_cond_idx", "train_cond_idx"} <= set(cached_target)


@pytest.mark.slow
def test_preprocess_psth_equals_nlb_tools(nlb_env, nlb_dataset):
    """Verify that the cached PSTH entries equal nlb_tools' include_psth=True output."""
    from nlb_tools.make_tensors import make_eval_target_tensors

    expected = make_eval_target_tensors(nlb_dataset, DATASET, "train", "val", include_psth=True,
                                        save_file=False)[DATASET]
    cached = preprocess.load_val_target(DATASET)[DATASET]
    assert set(cached) == set(expected)
    np.testing.assert_allclose(cached["psth"], expected["psth"].astype(np.float32),
                               rtol=1e-6, atol=1e-9, equal_nan=True)
    assert cached["psth"].shape == (27, 140, 142)
    for key in ("eval_cond_idx", "train_cond_idx"):
        assert len(cached[key]) == len(expected[key]) == 27
        for got, want in zip(cached[key], expected[key]):
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=key)


def test_preprocess_test_tensors_equal_nlb_tools(nlb_env, nlb_dataset):
    """Verify that the test phase trains on train+val trials and evaluates test trials."""
    from nlb_tools.make_tensors import make_eval_input_tensors, make_train_input_tensors

    cached = preprocess.load_tensors(DATASET, phase="test")
    expected = make_train_input_tensors(nlb_dataset, DATASET, trial_split=["train", "val"],
                                        include_forward_pred=True, save_file=False)
    expected.update(make_eval_input_tensors(nlb_dataset, DATASET, trial_split="test",
                                            save_file=False))
    assert set(cached) == set(expected) == set(preprocess.TRAIN_KEYS) | {"eval_spikes_heldin"}
    for key, arr in expected.items():
        np.testing.assert_array_equal(cached[key], arr.astype(np.float32), err_msg=key)
    assert cached["train_spikes_heldout"].shape == (100, 140, 35)
    assert cached["eval_spikes_heldin"].shape == (100, 140, 107)


def test_preprocess_reuses_cache(nlb_env, caplog):
    """Verify that a second build neither rewrites the file nor reloads the NWB files."""
    path = preprocess.build_tensors(DATASET, phase="val")
    target = preprocess.target_path(DATASET)
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, target)]
    with caplog.at_level(logging.INFO, logger="nlb_ndt.data.preprocess"):
        assert preprocess.build_tensors(DATASET, phase="val") == path
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, target)] == before
    assert "using cached" in caplog.text and "writing" not in caplog.text


@pytest.mark.slow
def test_preprocess_rebuilds_on_changed_source(synthetic_home, tmp_path, caplog):
    """Verify that a changed NWB file, or overwrite=True, rebuilds the cache."""
    dandiset = Path("raw") / SPEC.dandiset_id
    shutil.copytree(synthetic_home / dandiset, tmp_path / dandiset)
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    path = preprocess.build_tensors(DATASET, phase="test", paths=paths)
    first = path.stat().st_ino
    assert preprocess.build_tensors(DATASET, phase="test", paths=paths).stat().st_ino == first

    nwb = tmp_path / "raw" / SPEC.dandiset_id / SPEC.test_file
    os.utime(nwb, ns=(nwb.stat().st_atime_ns, nwb.stat().st_mtime_ns + 10**9))
    with caplog.at_level(logging.INFO, logger="nlb_ndt.data.preprocess"):
        preprocess.build_tensors(DATASET, phase="test", paths=paths)
    second = path.stat().st_ino
    assert second != first and "writing test-phase tensors" in caplog.text
    preprocess.build_tensors(DATASET, phase="test", paths=paths, overwrite=True)
    assert path.stat().st_ino != second
    assert not list(path.parent.glob(".*.tmp"))  # nothing half-written left behind


@pytest.mark.slow
def test_preprocess_20ms_shapes(nlb_env):
    """Verify the 20 ms track: 35 observed and 10 forward bins, groups named <name>_20."""
    val = preprocess.load_tensors(DATASET, phase="val", bin_ms=20)
    assert val["train_spikes_heldin"].shape == (75, 35, 107)
    assert val["train_spikes_heldout_forward"].shape == (75, 10, 35)
    assert val["eval_spikes_heldout"].shape == (25, 35, 35)
    assert val["eval_spikes_heldin_forward"].shape == (25, 10, 107)
    test = preprocess.load_tensors(DATASET, phase="test", bin_ms=20)
    assert test["train_spikes_heldin"].shape == (100, 35, 107)
    assert test["eval_spikes_heldin"].shape == (100, 35, 107)
    target = preprocess.load_val_target(DATASET, bin_ms=20)
    assert list(target) == ["mc_maze_small_20"]
    assert target["mc_maze_small_20"]["eval_spikes_heldout"].shape == (25, 35, 35)
    # Same trials and spikes as at 5 ms (the windows snap to a coarser grid, so only
    # the totals per neuron are close, not bin by bin).
    five = preprocess.load_tensors(DATASET, phase="val", bin_ms=5)["train_spikes_heldin"]
    totals5, totals20 = five.sum(axis=(0, 1)), val["train_spikes_heldin"].sum(axis=(0, 1))
    assert np.all(np.abs(totals20 - totals5) <= 0.1 * totals5 + 10)


def test_preprocess_missing_folder_message(tmp_path, monkeypatch):
    """Verify that missing NWB files give one line naming the path and both fixes."""
    monkeypatch.setenv("NLB_HOME", str(tmp_path))
    for var in ("NLB_DATA_RAW", "NDT_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        preprocess.load_tensors(DATASET, phase="val")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "raw" / SPEC.folder) in msg
    assert "python download_data.py --datasets mc_maze_small" in msg and "NLB_DATA_RAW" in msg
    assert not (tmp_path / "neural-data-transformer").exists()
