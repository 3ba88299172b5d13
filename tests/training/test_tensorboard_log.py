"""TensorBoard curves of a run (nlb_ndt.training.tensorboard_log), read back with its reader."""

from __future__ import annotations

import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nlb_ndt.training.tensorboard_log import TAGS, ScalarLog


def _read(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag in the folder as (step, value) pairs, as TensorBoard shows them."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def _metrics(step: int, offset: float = 0.0) -> dict[str, float]:
    """Distinct, step-dependent values for every metric."""
    return {"train_loss": 1.0 / (step + 1) + offset, "masked_loss": 0.5 + 0.1 * step + offset,
            "unmasked_loss": 0.4 + 0.01 * step + offset, "val_cobps": 0.02 * step + offset,
            "lr": 1e-3 * (step + 1)}


def _next_second() -> None:
    """Wait until the wall-clock second changes.

    Event files are named by the second they were opened in and read in name order; a
    real resumed run starts later than the killed one, and this gives the test the same.
    """
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def test_every_metric_is_written_with_its_steps_and_values(tmp_path):
    """Verify each metric lands under its tag with the right steps and values."""
    log_dir = tmp_path / "tb"
    with ScalarLog(log_dir, enabled=True) as log:
        for step in range(4):
            log.add(_metrics(step), step)
    curves = _read(log_dir)
    assert set(curves) == set(TAGS.values())
    for key, tag in TAGS.items():
        assert [s for s, _ in curves[tag]] == [0, 1, 2, 3]
        for step, value in curves[tag]:
            assert value == pytest.approx(_metrics(step)[key], rel=1e-6)


def test_each_add_is_on_disk_before_close(tmp_path):
    """Verify a run killed without closing still has every step written so far."""
    log = ScalarLog(tmp_path / "tb", enabled=True)
    log.add(_metrics(0), 0)
    log.add(_metrics(1), 1)
    assert [s for s, _ in _read(tmp_path / "tb")["val/cobps"]] == [0, 1]
    log.close()
    log.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        log.add(_metrics(2), 2)


def test_missing_and_non_finite_values_are_skipped_unknown_keys_refused(tmp_path):
    """Verify NaN/inf/None and absent metrics write nothing, a misspelt key raises."""
    with ScalarLog(tmp_path / "tb", enabled=True) as log:
        log.add({"train_loss": 1.0, "lr": 0.1}, 0)
        log.add({"train_loss": float("nan"), "val_cobps": float("inf"), "lr": None,
                 "masked_loss": 0.3}, 1)
        with pytest.raises(ValueError, match="val_co_bps"):
            log.add({"val_co_bps": 0.1}, 2)
    curves = _read(tmp_path / "tb")
    assert curves["train/loss"] == [(0, 1.0)]
    assert [s for s, _ in curves["train/lr"]] == [0]
    assert curves["val/masked_loss"] == [(1, pytest.approx(0.3))]
    assert "val/cobps" not in curves and "val/unmasked_loss" not in curves


def test_disabled_log_creates_nothing(tmp_path):
    """Verify a disabled log writes no folder and accepts the same calls."""
    with ScalarLog(tmp_path / "tb", enabled=False) as log:
        log.add(_metrics(0), 0)
    assert not (tmp_path / "tb").exists()
    assert list(tmp_path.iterdir()) == []


def test_resume_with_purge_step_appends_without_duplicate_points(tmp_path):
    """Verify a resumed run continues the curves and hides the killed run's redone steps.

    The first run writes steps 0-4 but its last checkpoint was after step 2; the resumed
    run redoes 3 and 4 (other values) and goes on to 5. Without purge_step both values
    of steps 3 and 4 would show.
    """
    log_dir = tmp_path / "tb"
    with ScalarLog(log_dir, enabled=True) as log:
        for step in range(5):
            log.add(_metrics(step), step)
    _next_second()
    with ScalarLog(log_dir, enabled=True, purge_step=3) as log:
        for step in range(3, 6):
            log.add(_metrics(step, offset=10.0), step)
    assert len(list(log_dir.iterdir())) == 2  # appended as a second event file
    cobps = _read(log_dir)["val/cobps"]
    assert [s for s, _ in cobps] == [0, 1, 2, 3, 4, 5]
    for step, value in cobps:
        want = _metrics(step, offset=10.0 if step >= 3 else 0.0)["val_cobps"]
        assert value == pytest.approx(want, rel=1e-6)


def test_resume_without_purge_step_duplicates_points(tmp_path):
    """Verify why purge_step exists: plain appending shows redone steps twice."""
    log_dir = tmp_path / "tb"
    with ScalarLog(log_dir, enabled=True) as log:
        for step in range(5):
            log.add(_metrics(step), step)
    _next_second()
    with ScalarLog(log_dir, enabled=True) as log:
        for step in range(3, 6):
            log.add(_metrics(step, offset=10.0), step)
    steps = [s for s, _ in _read(log_dir)["val/cobps"]]
    assert sorted(steps) == [0, 1, 2, 3, 3, 4, 4, 5]
