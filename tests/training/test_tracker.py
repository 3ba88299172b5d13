"""The snapshot tracker: which snapshots a validation improves, patience, saved state."""

from __future__ import annotations

import math

from nlb_ndt.config.layout import SNAPSHOT_KINDS
from nlb_ndt.training.tracker import BEST_FIELDS, SNAPSHOT_RULES, SnapshotTracker


def _val(masked: float, unmasked: float, cobps: float) -> dict:
    return {"masked_loss": masked, "unmasked_loss": unmasked, "val_cobps": cobps}


def test_tracker_rules_cover_every_snapshot_kind():
    """Verify that the tracker keeps exactly the snapshot kinds the run layout names."""
    assert tuple(SNAPSHOT_RULES) == SNAPSHOT_KINDS == tuple(BEST_FIELDS)


def test_tracker_reports_each_improvement_and_ignores_nan():
    """Verify that lower losses and higher co-bps improve their own snapshot only, that ties
    and NaN never count, and that the summary holds the best values."""
    tracker = SnapshotTracker(patience=100)
    assert tracker.update(_val(1.0, 2.0, 0.1), epoch=10) == ["lve", "lfve", "cobps"]
    assert tracker.update(_val(0.9, 2.0, 0.05), epoch=20) == ["lve"]
    assert tracker.update(_val(0.95, 1.5, 0.2), epoch=30) == ["lfve", "cobps"]
    assert tracker.update(_val(math.nan, math.nan, math.nan), epoch=40) == []
    assert tracker.summary() == {"best_masked_loss": 0.9, "best_unmasked_loss": 1.5,
                                 "best_val_cobps": 0.2}
    assert tracker.patience_epoch == 20


def test_tracker_patience_counts_epochs_since_the_best_masked_loss():
    """Verify that patience runs out only when the best masked loss is more than PATIENCE
    epochs old, whatever the other metrics do."""
    tracker = SnapshotTracker(patience=10)
    tracker.update(_val(1.0, 1.0, 0.1), epoch=5)
    tracker.update(_val(1.1, 0.5, 0.9), epoch=15)
    assert not tracker.patience_out(15)
    assert tracker.patience_out(16)


def test_tracker_adopts_a_better_snapshot_on_disk_only():
    """Verify that a snapshot's recorded metric replaces the best value only when better
    (a resume from an older state never lets a worse model overwrite that snapshot)."""
    tracker = SnapshotTracker(patience=10)
    tracker.update(_val(1.0, 1.0, 0.1), epoch=30)
    assert tracker.adopt("lve", {"masked_loss": 0.8, "epoch": 100})
    assert not tracker.adopt("cobps", {"val_cobps": 0.05, "epoch": 80})
    assert not tracker.adopt("lfve", {"epoch": 80})  # a file without the metric
    assert tracker.best["lve"].value == 0.8 and tracker.patience_epoch == 100
    assert tracker.best["cobps"].value == 0.1


def test_tracker_state_round_trips_and_reads_version_0_1_states():
    """Verify the tracker's own state round trip, and that a state.pt written by version
    0.1 ({"masked", "unmasked", "cobps", "masked_epoch"}) loads into the same bests."""
    tracker = SnapshotTracker(patience=10)
    tracker.update(_val(1.0, 2.0, 0.3), epoch=40)
    again = SnapshotTracker(patience=10)
    again.load_state_dict(tracker.state_dict())
    assert again.summary() == tracker.summary() and again.patience_epoch == 40
    old = SnapshotTracker(patience=10)
    old.load_state_dict({"masked": 1.0, "unmasked": 2.0, "cobps": 0.3, "masked_epoch": 40})
    assert old.summary() == tracker.summary() and old.patience_epoch == 40
