"""The run folder: records, history, durable state with a fallback, snapshot records."""

from __future__ import annotations

import csv
import json
import logging

import torch

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.layout import METRIC_FIELDS, STATE_BACKUP_FILE, STATE_FILE
from nlb_ndt.model.factory import build_model
from nlb_ndt.training.run_folder import RunFolder

TINY = ["MODEL.NUM_LAYERS", 1, "MODEL.HIDDEN_SIZE", 8, "MODEL.EMBED_DIM", 0, "MODEL.NUM_HEADS", 1]


def test_records_and_history_are_written():
    """Verify config.yaml, run_info.json and metrics.csv (METRIC_FIELDS columns, one row
    per validation)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder(Path(tmp) / "run", "t0")
        folder.write_records("SEED: 3\n", {"seed": 3})
        assert (folder.path / "config.yaml").read_text() == "SEED: 3\n"
        assert json.loads((folder.path / "run_info.json").read_text()) == {"seed": 3}
        assert folder.run_info() == {"seed": 3}
        folder.write_history([{"epoch": 10, "done": False, "extra": 1}])
        rows = list(csv.DictReader(open(folder.path / "metrics.csv")))
        assert list(rows[0]) == list(METRIC_FIELDS) and rows[0]["epoch"] == "10"


def test_state_keeps_the_previous_one_and_falls_back_to_it(tmp_path, caplog):
    """Verify that each save keeps the state it replaces as state.prev.pt, that a truncated
    state.pt is reported in one line and the previous state is used, and that with both
    unreadable there is no state."""
    folder = RunFolder(tmp_path, "t0")
    assert folder.load_state() is None
    folder.save_state({"epoch": 10, "w": torch.ones(3)})
    folder.save_state({"epoch": 20, "w": torch.zeros(3)})
    assert folder.load_state()["epoch"] == 20
    assert torch.load(tmp_path / STATE_BACKUP_FILE, weights_only=True)["epoch"] == 10
    state = tmp_path / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # a copy cut short
    with caplog.at_level(logging.WARNING):
        assert folder.load_state()["epoch"] == 10
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "state.pt is unreadable" in warnings[0]
    (tmp_path / STATE_BACKUP_FILE).write_bytes(b"")
    assert folder.load_state() is None
    assert not list(tmp_path.glob(".*"))  # no temporary files or links left behind


def test_snapshot_record_reads_metrics_and_survives_a_damaged_file(tmp_path):
    """Verify that a snapshot's recorded metrics and epoch are read back, and that an
    empty snapshot file reads as no record."""
    cfg = load_config(opts=TINY)
    model = build_model(cfg, num_neurons=5, trial_length=7, max_spikes=4)
    folder = RunFolder(tmp_path, "t0")
    assert folder.snapshot_record("lve") is None
    path = folder.save_snapshot("lve", model, cfg, epoch=30, metrics={"masked_loss": 0.5})
    assert path == tmp_path / "ckpts" / "t0.lve.pth"
    assert folder.snapshot_record("lve") == {"masked_loss": 0.5, "epoch": 30}
    path.write_bytes(b"")
    assert folder.snapshot_record("lve") is None
