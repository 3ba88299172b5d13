"""Run, trial and experiment folders: snapshot names, finding snapshots, and the readers."""

from __future__ import annotations

import json

import pytest

from nlb_ndt.config.layout import (
    EXPERIMENT_INFO_FILE,
    OBJECTIVES,
    PARAMS_FILE,
    RUN_INFO_FILE,
    SNAPSHOT_KINDS,
    find_snapshots,
    read_run_info,
    search_objective,
    snapshot_path,
    trial_hyperparameters,
)
from nlb_ndt.paths import get_paths


def _touch_trial(root, experiment: str, trial_id: str, kinds=SNAPSHOT_KINDS) -> None:
    ckpts = root / experiment / f"trial_{trial_id}" / "ckpts"
    ckpts.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        (ckpts / f"{trial_id}.{kind}.pth").write_bytes(b"")


def test_snapshot_path_relative_absolute_and_unknown_kind(tmp_path):
    """Verify `<run>/ckpts/<id>.<kind>.pth`, an absolute checkpoint folder kept as is, and
    that an unknown kind is refused with the list of kinds."""
    assert snapshot_path(tmp_path, "ab12", "lve") == tmp_path / "ckpts" / "ab12.lve.pth"
    assert snapshot_path(tmp_path, "ab12", "cobps", "snaps/") == \
        tmp_path / "snaps" / "ab12.cobps.pth"
    elsewhere = tmp_path / "elsewhere"
    assert snapshot_path(tmp_path / "run", "x", "lfve", elsewhere) == elsewhere / "x.lfve.pth"
    with pytest.raises(ValueError, match="unknown snapshot kind 'best'; kinds: lve, lfve, cobps"):
        snapshot_path(tmp_path, "ab12", "best")


def test_find_snapshots_filters_kinds_and_refuses_unknown_ones(tmp_path):
    """Verify that only the kinds asked for are returned, with trial id, kind, experiment and
    folder, and that unknown or no kinds raise ValueError."""
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    root = paths.ray_tune_home / "run"
    _touch_trial(root, "run-s0", "aaaa0001")
    _touch_trial(root, "run-s0", "bbbb0002", kinds=("lve",))
    (root / "run-s0" / "trial_aaaa0001" / "stray.lve.pth").write_bytes(b"")  # not in ckpts/
    found = find_snapshots("run", paths=paths, kinds=("lve",))
    assert [(s.trial_id, s.val_ckpt) for s in found] == [("aaaa0001", "lve"), ("bbbb0002", "lve")]
    assert all(s.experiment == "run-s0" and s.trial_dir.name == f"trial_{s.trial_id}"
               for s in found)
    assert len(find_snapshots("run", paths=paths)) == 4
    assert find_snapshots("other", paths=paths) == []
    with pytest.raises(ValueError, match="unknown snapshot kind.*best"):
        find_snapshots("run", paths=paths, kinds=("lve", "best"))
    with pytest.raises(ValueError, match="none given"):
        find_snapshots("run", paths=paths, kinds=())


def test_find_snapshots_leaves_out_smoke_tests_unless_alone(tmp_path):
    """Verify that smoke-test experiments are ranked only when the run has nothing else."""
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    root = paths.ray_tune_home / "run"
    _touch_trial(root, "run-s0-smoke", "aaaa0001")
    found = find_snapshots("run", paths=paths)
    assert {s.experiment for s in found} == {"run-s0-smoke"} and len(found) == 3
    _touch_trial(root, "run-s0", "bbbb0002")
    _touch_trial(root, "run-s0-smoke-2", "cccc0003")
    found = find_snapshots("run", paths=paths)
    assert {s.experiment for s in found} == {"run-s0"}
    assert {s.trial_id for s in found} == {"bbbb0002"}


def test_trial_hyperparameters_flattens_params_json(tmp_path):
    """Verify that nested params become dotted keys, lists become JSON text, and a missing
    or unreadable params.json gives {}."""
    assert trial_hyperparameters(tmp_path) == {}
    (tmp_path / PARAMS_FILE).write_text(json.dumps(
        {"TRAIN": {"LR": {"INIT": 0.002}}, "MODEL.DROPOUT": 0.1, "SHAPE": [1, 2], "X": None}))
    assert trial_hyperparameters(tmp_path) == {
        "TRAIN.LR.INIT": 0.002, "MODEL.DROPOUT": 0.1, "SHAPE": "[1, 2]", "X": None}
    (tmp_path / PARAMS_FILE).write_text("{not json")
    assert trial_hyperparameters(tmp_path) == {}


def test_read_run_info_missing_or_broken_file_is_empty(tmp_path):
    """Verify that run_info.json is read back, and a missing or broken one gives {}."""
    assert read_run_info(tmp_path) == {}
    (tmp_path / RUN_INFO_FILE).write_text(json.dumps({"epochs": 12}))
    assert read_run_info(tmp_path) == {"epochs": 12}
    (tmp_path / RUN_INFO_FILE).write_text("[broken")
    assert read_run_info(tmp_path) == {}


def test_search_objective_default_and_recorded(tmp_path):
    """Verify that a run without records gets the original's objective (best_masked_loss),
    and that an experiment's recorded objective wins."""
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    assert search_objective("run", paths=paths) == "best_masked_loss" == next(iter(OBJECTIVES))
    exp = paths.ray_tune_home / "run" / "run-s0"
    exp.mkdir(parents=True)
    (exp / EXPERIMENT_INFO_FILE).write_text(json.dumps({"objective": "best_val_cobps"}))
    assert search_objective("run", paths=paths) == "best_val_cobps"
