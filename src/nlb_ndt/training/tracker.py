"""Which snapshots a validation improves, and when patience runs out.

A run keeps one snapshot per kind, each overwritten when its metric improves:

    lve    lowest masked val loss (the original's criterion and early-stopping metric)
    lfve   lowest unmasked val loss (held-in reconstruction)
    cobps  highest val co-bps of the held-out neurons

Patience follows the lve metric, as in the original: training stops when the best masked
val loss is more than PATIENCE epochs old.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

#: snapshot kind -> (the validation metric it keeps the best of, "min" or "max").
SNAPSHOT_RULES: dict[str, tuple[str, str]] = {
    "lve": ("masked_loss", "min"),
    "lfve": ("unmasked_loss", "min"),
    "cobps": ("val_cobps", "max"),
}
#: snapshot kind -> the name of its best value in metrics.csv and in Tune's results.
BEST_FIELDS = {"lve": "best_masked_loss", "lfve": "best_unmasked_loss",
               "cobps": "best_val_cobps"}
#: The kind whose metric sets patience.
PATIENCE_KIND = "lve"
# The keys of the original state files (version 0.1) for the best values.
_V01_KEYS = {"lve": "masked", "lfve": "unmasked", "cobps": "cobps"}


def _better(value: float, than: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return value < than if mode == "min" else value > than


@dataclass
class Best:
    """The best value of one snapshot kind and the epoch it was reached at."""

    value: float
    epoch: int = 0


class SnapshotTracker:
    """Best values per snapshot kind and the patience rule.

    Args:
        patience: epochs the best masked val loss may age before training stops.
    """

    def __init__(self, patience: int):
        self.patience = int(patience)
        self.best = {kind: Best(math.inf if mode == "min" else -math.inf)
                     for kind, (_, mode) in SNAPSHOT_RULES.items()}

    def update(self, metrics: Mapping[str, float], epoch: int) -> list[str]:
        """Take one validation's metrics; the kinds whose snapshot must be rewritten."""
        improved = []
        for kind, (metric, mode) in SNAPSHOT_RULES.items():
            value = float(metrics[metric])
            if _better(value, self.best[kind].value, mode):
                self.best[kind] = Best(value, int(epoch))
                improved.append(kind)
        return improved

    def adopt(self, kind: str, record: Mapping[str, float]) -> bool:
        """Take a snapshot file's recorded metric when it is better than the best known.

        A run resumed from a state older than its snapshots (killed between the two
        writes) then never replaces a snapshot by a worse model.
        """
        metric, mode = SNAPSHOT_RULES[kind]
        value = record.get(metric)
        if value is None or not _better(float(value), self.best[kind].value, mode):
            return False
        self.best[kind] = Best(float(value), int(record.get("epoch", 0)))
        return True

    def patience_out(self, epoch: int) -> bool:
        """Whether the best masked val loss is more than `patience` epochs old."""
        return epoch - self.best[PATIENCE_KIND].epoch > self.patience

    @property
    def patience_epoch(self) -> int:
        return self.best[PATIENCE_KIND].epoch

    def summary(self) -> dict[str, float]:
        """{best_masked_loss, best_unmasked_loss, best_val_cobps}."""
        return {BEST_FIELDS[kind]: best.value for kind, best in self.best.items()}

    def state_dict(self) -> dict:
        return {kind: {"value": b.value, "epoch": b.epoch} for kind, b in self.best.items()}

    def load_state_dict(self, state: Mapping) -> None:
        """Our state, or version 0.1's {"masked", "unmasked", "cobps", "masked_epoch"}."""
        if "masked" in state:  # version 0.1 kept only the lve epoch
            for kind, key in _V01_KEYS.items():
                epoch = state.get("masked_epoch", 0) if kind == PATIENCE_KIND else 0
                self.best[kind] = Best(float(state[key]), int(epoch))
            return
        for kind in SNAPSHOT_RULES:
            self.best[kind] = Best(float(state[kind]["value"]), int(state[kind]["epoch"]))
