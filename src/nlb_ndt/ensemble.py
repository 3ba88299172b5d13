"""Mean-of-rates ensembles and the choice of ensemble size. Pure numpy; touches no files.

AESMTE3 averages the (already exponentiated) rates of the top-N snapshots, ranked by
validation co-bps (original_pipeline.md §6.2). Its N came from a curve of ensemble co-bps
against N that had a bug (§10 #4); here the curve is rebuilt exactly as described, the
mean of the top N for N = 1..M scored with nlb_tools' `bits_per_spike`, and the argmax
is chosen.

Rates are in spikes per bin throughout. Sums are accumulated in float64 and the mean is
cast to float32 (what the submission file stores), so the curve's value at N is exactly
the co-bps of the N-member submission, however the members are streamed.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np


class RunningMean:
    """Mean of rate dicts added one at a time, holding one float64 sum per key.

    Used by every ensemble in the project (submission, validation, the size sweep), so
    the memory cost is one sum, never N members' rates, and all paths give the same
    numbers for the same members in the same order.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, rates: Mapping[str, np.ndarray]) -> None:
        """Add one member's rates (same keys and shapes as every other member)."""
        if self.count and set(rates) != set(self._sums):
            raise ValueError(
                f"ensemble member has arrays {sorted(rates)}; earlier members had "
                f"{sorted(self._sums)}")
        for key, value in rates.items():
            value = np.asarray(value)
            if not self.count:
                self._sums[key] = value.astype(np.float64)  # a copy, never the member's array
                continue
            if value.shape != self._sums[key].shape:
                raise ValueError(f"ensemble member's {key} has shape {value.shape}; "
                                 f"earlier members had {self._sums[key].shape}")
            self._sums[key] += value
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        """The float32 mean of the members added so far."""
        if not self.count:
            raise ValueError("an ensemble needs at least one member")
        return {key: (s / self.count).astype(np.float32) for key, s in self._sums.items()}


def mean_rates(members: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The float32 mean, key by key, of rate dicts (all with the same keys and shapes)."""
    running = RunningMean()
    for member in members:
        running.add(member)
    return running.mean()


def co_bps(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Co-smoothing bits per spike (nlb_tools' formula; NaN spikes are ignored).

    Args:
        rates: (trials, bins, held-out neurons) predicted rates, spikes per bin.
        spikes: the same shape, observed held-out counts (NaN where unscored).
    """
    from nlb_tools.evaluation import bits_per_spike

    # bits_per_spike replaces zero rates in place, so it only ever sees a copy.
    return float(bits_per_spike(np.array(rates, dtype=np.float64),
                                np.asarray(spikes, dtype=np.float64)))


def ensemble_curve(ranked_heldout: Iterable[np.ndarray], eval_spikes_heldout: np.ndarray,
                   *, max_size: int | None = None) -> np.ndarray:
    """Val co-bps of the mean of the top N members, for N = 1..M.

    Args:
        ranked_heldout: each member's `eval_rates_heldout` (trials, bins, held-out
            neurons), best member first. Consumed lazily, one array at a time.
        eval_spikes_heldout: the val target's held-out spikes, same shape.
        max_size: M; None takes every member.

    Returns:
        float array of length M; element N-1 is the co-bps of the top-N mean.
    """
    if max_size is not None and max_size < 1:
        raise ValueError(f"the largest ensemble size must be >= 1, not {max_size}")
    running = RunningMean()
    curve: list[float] = []
    for n, rates in enumerate(ranked_heldout, start=1):
        if max_size is not None and n > max_size:
            break
        rates = np.asarray(rates)
        if rates.shape != eval_spikes_heldout.shape:
            raise ValueError(f"member {n}'s eval_rates_heldout has shape {rates.shape}; "
                             f"the val target's eval_spikes_heldout has "
                             f"{eval_spikes_heldout.shape}")
        running.add({"eval_rates_heldout": rates})
        curve.append(co_bps(running.mean()["eval_rates_heldout"], eval_spikes_heldout))
    if not curve:
        raise ValueError("no ensemble members to score")
    return np.asarray(curve)


def choose_size(curve: np.ndarray) -> int:
    """The ensemble size N (1-based) with the highest co-bps; the smallest N on ties.

    NaN entries (a member that could not be scored) are never chosen.
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size == 0 or np.all(np.isnan(curve)):
        raise ValueError("the ensemble curve has no finite value to choose from")
    return int(np.nanargmax(curve)) + 1
