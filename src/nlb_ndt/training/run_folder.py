"""The files of one run folder: records, history, resumable state and snapshots.

    <run_dir>/config.yaml  run_info.json  metrics.csv  state.pt  state.prev.pt  tb/
    <run_dir>/<checkpoint dir>/<trial id>.<lve|lfve|cobps|final>.pth

Every write is atomic and durable (nlb_ndt.atomic). Before `state.pt` is replaced, the
previous one is kept as `state.prev.pt` (a hard link, so nothing is copied), so a state
file damaged outside our control (a copy cut short, a full disk, an older version's
non-durable write) costs one save interval rather than the run: `load_state` says in one
line which file it could not read and falls back to the other.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from nlb_ndt.atomic import atomic_write, write_text_atomic
from nlb_ndt.config.layout import (
    CONFIG_FILE,
    METRIC_FIELDS,
    METRICS_FILE,
    RUN_INFO_FILE,
    STATE_BACKUP_FILE,
    STATE_FILE,
    read_run_info,
    snapshot_path,
)
from nlb_ndt.model.checkpoint import read_checkpoint, save_checkpoint
from nlb_ndt.training.tensorboard_log import ScalarLog

logger = logging.getLogger(__name__)

#: What a damaged or foreign state / snapshot file raises when read.
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError,
              zipfile.BadZipFile)


class RunFolder:
    """Owns the files of one run folder; the trainer decides what to write, this writes it.

    Args:
        run_dir: the folder (created on the first write).
        trial_id: names the snapshot files `<trial_id>.<kind>.pth`.
        checkpoint_dir: the snapshot folder, relative to run_dir unless absolute.
    """

    def __init__(self, run_dir: str | Path, trial_id: str = "run",
                 checkpoint_dir: str | Path = "ckpts"):
        self.path = Path(run_dir)
        self.trial_id = trial_id
        self.checkpoint_dir = checkpoint_dir

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r}, trial_id={self.trial_id!r})"

    # ------------------------------------------------------------------ records
    def write_records(self, config_text: str, info: Mapping[str, Any]) -> None:
        """config.yaml (the resolved config) and run_info.json (data, device, versions)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / CONFIG_FILE, config_text)
        write_text_atomic(self.path / RUN_INFO_FILE, json.dumps(dict(info), indent=2))

    def run_info(self) -> dict:
        """run_info.json ({} when missing or unreadable)."""
        return read_run_info(self.path)

    def write_history(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """metrics.csv: one row per validation (columns METRIC_FIELDS)."""
        with atomic_write(self.path / METRICS_FILE) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def curves(self, log_dir: str | Path, enabled: bool, *, resume_epoch: int) -> ScalarLog:
        """TensorBoard curves; a resumed run hides what the stopped one wrote after its
        saved state, so no epoch appears twice."""
        return ScalarLog(self.path / log_dir, enabled,
                         purge_step=resume_epoch + 1 if resume_epoch else None)

    # -------------------------------------------------------------------- state
    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Write state.pt, keeping the one it replaces as state.prev.pt."""
        current, backup = self.state_file, self.path / STATE_BACKUP_FILE
        if current.is_file():
            link = backup.with_name(f".{backup.name}.{os.getpid()}.link")
            link.unlink(missing_ok=True)
            os.link(current, link)
            os.replace(link, backup)
        with atomic_write(current) as tmp:
            torch.save(dict(state), tmp)

    def load_state(self, map_location: Any = "cpu") -> dict | None:
        """The newest readable state (state.pt, else state.prev.pt), or None.

        An unreadable file is reported in one line and skipped; it is replaced at the next
        save.
        """
        for path in (self.state_file, self.path / STATE_BACKUP_FILE):
            if not path.is_file():
                continue
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
                if not isinstance(state, dict) or "epoch" not in state:
                    raise ValueError("not a training state")
                return state
            except UNREADABLE as exc:
                logger.warning("%s is unreadable (%s: %s); falling back to the previous "
                               "saved state", path, type(exc).__name__, exc)
        return None

    # ---------------------------------------------------------------- snapshots
    def snapshot_file(self, kind: str) -> Path:
        return snapshot_path(self.path, self.trial_id, kind, self.checkpoint_dir)

    def save_snapshot(self, kind: str, model: torch.nn.Module, cfg, **info: Any) -> Path:
        """`<trial_id>.<kind>.pth` in our checkpoint format (nlb_ndt.model.checkpoint)."""
        return save_checkpoint(self.snapshot_file(kind), model, cfg, trial_id=self.trial_id,
                               kind=kind, **info)

    def snapshot_record(self, kind: str) -> dict | None:
        """{"epoch", **metrics} recorded in snapshot `kind`, or None when there is none or
        it cannot be read (then it is reported in one line and rewritten at the next
        improvement)."""
        path = self.snapshot_file(kind)
        if not path.is_file():
            return None
        try:
            data = read_checkpoint(path)
            return {**dict(data.get("metrics") or {}), "epoch": int(data.get("epoch", 0))}
        except UNREADABLE as exc:
            logger.warning("snapshot %s is unreadable (%s: %s); it is rewritten at the next "
                           "improvement", path, type(exc).__name__, exc)
            return None
