"""TensorBoard curves of one training run: losses, val co-bps and learning rate per step.

A run's curves are the quickest check that a trial trained sensibly (a diverging loss, an
LR schedule that never warmed up, co-bps that peaked early), so each run can write them
to its own folder. The writer flushes after every step, so a run that is killed keeps
the curves up to its last step, and a resumed run appends to the same folder.

Resuming: TensorBoard shows every event in a folder, so the steps a killed run wrote
after its last checkpoint would appear twice once the resumed run redoes them. Passing
`purge_step` = the first step the resumed run will write (the epoch after the
checkpoint's) writes a restart marker that makes TensorBoard's readers hide the older
events at that step and later (nothing is deleted from the old event file). A fresh run
passes None.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Mapping

logger = logging.getLogger(__name__)

#: metrics key -> TensorBoard tag.
TAGS = {
    "train_loss": "train/loss",
    "masked_loss": "val/masked_loss",
    "unmasked_loss": "val/unmasked_loss",
    "val_cobps": "val/cobps",
    "lr": "train/lr",
}


class ScalarLog:
    """Scalar curves of one run in a TensorBoard folder; does nothing when disabled.

    Use as a context manager (`with ScalarLog(folder, enabled) as log: log.add(...)`)
    so the event file is closed however the run ends.

    Args:
        log_dir: the run's TensorBoard folder (created only when enabled).
        enabled: False makes every method a no-op and creates no folder, so callers
            need no branches of their own.
        purge_step: on resume, the first step this run will write; see the module
            docstring. None for a fresh run.
    """

    def __init__(self, log_dir: str | Path, enabled: bool, *,
                 purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None
        if not enabled:
            return
        # Imported here so runs with logging off never need tensorboard installed.
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        logger.info("TensorBoard curves in %s%s", self.log_dir,
                    "" if purge_step is None else f" (resumed at step {purge_step})")

    def add(self, metrics: Mapping[str, float | None], step: int) -> None:
        """Write the metrics present in `metrics` at `step`, then flush to disk.

        Keys are those of TAGS (any subset: val metrics may exist only every few
        epochs). None and non-finite values are skipped, since TensorBoard draws a NaN
        as a gap at best and a broken axis at worst; an unknown key raises, so a
        misspelt metric is not silently lost.
        """
        unknown = set(metrics) - set(TAGS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; "
                             f"known: {', '.join(TAGS)}")
        if not self.enabled:
            return
        if self._writer is None:
            raise RuntimeError(f"the TensorBoard log in {self.log_dir} is closed")
        for key, value in metrics.items():
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                logger.debug("skipping non-finite %s=%s at step %d", key, value, step)
                continue
            self._writer.add_scalar(TAGS[key], value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "ScalarLog":
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
