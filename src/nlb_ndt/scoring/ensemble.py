"""Ensembles: mean-of-rates, the ensemble-size sweep, greedy selection, and the mean
rates of checkpoint files (`ensemble_rates`, which loads one model at a time).

AESMTE3 averages the (already exponentiated) rates of the top-N snapshots, ranked by
validation co-bps. Its N came from a curve of ensemble co-bps against N that had a bug
(see approach.md, 'Known bugs of the original'); here the curve is rebuilt exactly as
described, the mean of the top N for N = 1..M scored with nlb_tools' `bits_per_spike`, and
the argmax is chosen. `greedy_selection` is the alternative from Caruana et al. (2004):
forward selection with replacement, whose best prefix is a mean with multiplicities
(`member_counts`: a list counts each repeat, a mapping gives counts). Which members an
ensemble gets is decided in nlb_ndt.scoring.selection; this module averages and scores.

Rates are in spikes per bin throughout. Sums are accumulated in float64 and the mean is
cast to float32 (what the submission file stores), so the curve's value at N is exactly
the co-bps of the N-member submission, however the members are streamed.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nlb_ndt.model.inference import snapshot_rates
from nlb_ndt.scoring.metrics import co_bps

logger = logging.getLogger(__name__)

#: How an ensemble's members are chosen: the top N of the ranking (AESMTE3), or greedy
#: forward selection with replacement (`greedy_selection`).
ENSEMBLE_METHODS = ("topn", "greedy")


class RunningMean:
    """Mean of rate dicts added one at a time, holding one float64 sum per key.

    Used by every ensemble in the project (submission, validation, the size sweep), so
    the memory cost is one sum, never N members' rates, and all paths give the same
    numbers for the same members in the same order.
    """

    def __init__(self) -> None:
        self._sums: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, rates: Mapping[str, np.ndarray], count: int = 1) -> None:
        """Add one member's rates (same keys and shapes as every other member).

        `count` adds the member that many times (a member picked more than once by
        greedy selection) without the caller passing, or a model computing, it again.
        """
        if count < 1:
            raise ValueError(f"an ensemble member's count must be >= 1, not {count}")
        if self.count and set(rates) != set(self._sums):
            raise ValueError(
                f"ensemble member has arrays {sorted(rates)}; earlier members had "
                f"{sorted(self._sums)}")
        for key, value in rates.items():
            value = np.asarray(value)
            if not self.count:
                self._sums[key] = value.astype(np.float64)  # a copy, never the member's array
                if count != 1:
                    self._sums[key] *= count
                continue
            if value.shape != self._sums[key].shape:
                raise ValueError(f"ensemble member's {key} has shape {value.shape}; "
                                 f"earlier members had {self._sums[key].shape}")
            if count == 1:
                self._sums[key] += value
            else:
                self._sums[key] += count * value.astype(np.float64)
        self.count += count

    def mean(self) -> dict[str, np.ndarray]:
        """The float32 mean of the members added so far."""
        if not self.count:
            raise ValueError("an ensemble needs at least one member")
        return {key: (s / self.count).astype(np.float32) for key, s in self._sums.items()}


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


@dataclass(frozen=True)
class GreedySelection:
    """What greedy ensemble selection chose, step by step.

    Attributes:
        steps: the candidate index added at each step, in order (repeats allowed).
        curve: (len(steps),) val co-bps of the mean of the first k+1 steps' members.
        best_n: length of the best prefix of `steps` (argmax of `curve`, earliest on ties).
        members: candidate index -> how many times it is in that best prefix, in order
            of first pick (`counts(best_n)`).
        n_candidates: how many candidates there were to choose from.
        init_size: how many leading steps were the sorted (top-N) initialisation
            rather than greedy choices (0 for `init="best"`).
    """

    steps: list[int]
    curve: np.ndarray
    best_n: int
    members: dict[int, int]
    n_candidates: int
    init_size: int

    @property
    def best_cobps(self) -> float:
        """Val co-bps of the chosen ensemble (the best prefix)."""
        return float(self.curve[self.best_n - 1])

    def counts(self, size: int | None = None) -> dict[int, int]:
        """Candidate index -> multiplicity among the first `size` steps, in order of first pick.

        Args:
            size: a prefix length, 1..len(steps) (default `best_n`, giving `members`).
        """
        size = self.best_n if size is None else int(size)
        if not 1 <= size <= len(self.steps):
            raise ValueError(f"a greedy ensemble size must be in 1..{len(self.steps)}, "
                             f"not {size}")
        return dict(Counter(self.steps[:size]))


def _checked(candidates: Sequence[np.ndarray], index: int, shape: tuple[int, ...]
             ) -> np.ndarray:
    """Candidate `index` as an array (a memmap stays a memmap), its shape checked."""
    rates = np.asarray(candidates[index])
    if rates.shape != shape:
        raise ValueError(f"candidate {index}'s eval_rates_heldout has shape {rates.shape}; "
                         f"the val target's eval_spikes_heldout has {shape}")
    return rates


def _accumulate(running_sum: np.ndarray | None, rates: np.ndarray) -> np.ndarray:
    """running_sum + rates in float64, in place (a new float64 copy for the first member)."""
    if running_sum is None:
        return rates.astype(np.float64)
    running_sum += rates
    return running_sum


def _trial_cobps(running_sum: np.ndarray | None, rates: np.ndarray, size: int,
                 buffer: np.ndarray, spikes: np.ndarray) -> float:
    """Val co-bps of (running_sum + rates) / size, built in `buffer` (no new sum).

    The mean is cast to float32 before scoring, as RunningMean.mean does, so a step's
    score is the score of the float32 submission those members would make.
    """
    if running_sum is None:
        np.copyto(buffer, rates)
    else:
        np.add(running_sum, rates, out=buffer)
    buffer /= size
    score = co_bps(buffer.astype(np.float32), spikes)
    return score if np.isfinite(score) else -np.inf


def _sorted_init(candidates: Sequence[np.ndarray], spikes: np.ndarray, max_steps: int
                 ) -> tuple[list[int], list[float], np.ndarray]:
    """The best top-N prefix among sizes <= max_steps: its steps, curve and float64 sum."""
    shape = spikes.shape
    top_n = ensemble_curve((_checked(candidates, i, shape)
                            for i in range(min(max_steps, len(candidates)))), spikes)
    steps, running_sum = list(range(choose_size(top_n))), None
    for index in steps:
        running_sum = _accumulate(running_sum, _checked(candidates, index, shape))
    return steps, [float(c) for c in top_n[:len(steps)]], running_sum


def _best_addition(candidates: Sequence[np.ndarray], running_sum: np.ndarray | None,
                   size: int, buffer: np.ndarray, spikes: np.ndarray) -> tuple[int, float]:
    """The candidate whose addition gives the best co-bps (ties: the lowest index)."""
    best_index, best_score = 0, -np.inf
    for index in range(len(candidates)):
        score = _trial_cobps(running_sum, _checked(candidates, index, spikes.shape), size,
                             buffer, spikes)
        if score > best_score:  # strict: ties keep the lowest index
            best_index, best_score = index, score
    return best_index, best_score


def greedy_selection(candidates: Sequence[np.ndarray], eval_spikes_heldout: np.ndarray,
                     *, max_steps: int, init: str = "sorted") -> GreedySelection:
    """Greedy forward ensemble selection with replacement on val co-bps (Caruana et al. 2004).

    Top-N averaging can only take a prefix of the ranking; forward selection can skip a
    snapshot whose errors duplicate those already in the mean and can repeat a very good
    one, i.e. it searches over weighted means. At each step the candidate whose addition
    gives the best val co-bps of the running mean is added (ties: the lowest index), even
    when no candidate improves it, so the curve exists up to `max_steps`; the selection
    kept is the best prefix (argmax of the curve, earliest on ties). Against top-N
    (`ensemble_curve` on the same candidates):

    * `init="best"` (plain forward selection): step 1 is the best single candidate
      (computed from the arrays), so curve[0] >= top-1's; on a sorted ranking step 2
      tries top-2's second member, so curve[1] >= top-2's. From size 3 on NOTHING is
      guaranteed: greedy's best can fall below top-N's best
      (tests/scoring/test_ensemble.py builds such a case).
    * `init="sorted"` (default; Caruana's "sorted ensemble initialisation"): the first
      steps are the top-N prefix with the best top-N co-bps among sizes <= max_steps, so
      the kept selection's co-bps is >= the best top-N ensemble of at most max_steps
      members, by construction (per-size dominance beyond that prefix is not).

    Memory: two float64 sums of shape (B, T, N_out); each candidate is read once per step
    (memmaps are never all in memory), and a step costs len(candidates) co-bps evaluations.

    Args:
        candidates: per-snapshot val `eval_rates_heldout`, each (B, T, N_out), in ranking
            order (index 0 = best single snapshot by val co-bps).
        eval_spikes_heldout: (B, T, N_out) val held-out spikes (NaN where unscored).
        max_steps: number of steps (ensemble size, counting repeats) to take, >= 1.
        init: "sorted" or "best", see above.

    Returns:
        GreedySelection; its `members` (or `counts(size)`) with `ensemble_rates` or
        `RunningMean.add(rates, count=...)` build the submission.
    """
    if max_steps < 1:
        raise ValueError(f"greedy selection needs max_steps >= 1, not {max_steps}")
    if init not in ("sorted", "best"):
        raise ValueError(f"init must be 'sorted' or 'best', not {init!r}")
    if len(candidates) == 0:
        raise ValueError("no candidates to select an ensemble from")
    spikes = np.asarray(eval_spikes_heldout)
    steps, curve, running_sum = (_sorted_init(candidates, spikes, max_steps)
                                 if init == "sorted" else ([], [], None))
    init_size, buffer = len(steps), np.empty(spikes.shape, dtype=np.float64)
    while len(steps) < max_steps:
        size = len(steps) + 1
        index, score = _best_addition(candidates, running_sum, size, buffer, spikes)
        running_sum = _accumulate(running_sum, _checked(candidates, index, spikes.shape))
        steps.append(index)
        curve.append(score if np.isfinite(score) else np.nan)
        logger.debug("greedy step %d: candidate %d, val co-bps %.5f", size, index, score)
    curve_array = np.asarray(curve, dtype=np.float64)
    best_n = choose_size(curve_array)
    members = dict(Counter(steps[:best_n]))
    logger.info("greedy selection: %d steps, best prefix %d (%d distinct snapshots), "
                "val co-bps %.5f", len(steps), best_n, len(members), curve_array[best_n - 1])
    return GreedySelection(steps=steps, curve=curve_array, best_n=best_n, members=members,
                           n_candidates=len(candidates), init_size=init_size)


def member_counts(checkpoints: Iterable[str | Path] | Mapping[str | Path, int]
                  ) -> dict[Path, int]:
    """{file: multiplicity} of an ensemble's checkpoint files, in order of first appearance.

    The one rule for multiplicity: a list counts each repeat (`[a, a, b]` is a twice and
    b once), a mapping gives the counts explicitly (`{a: 2, b: 1}`, the same ensemble).
    Paths are compared as `Path`s, so "x.pth" and Path("x.pth") are one file.

    Raises:
        ValueError: no checkpoint, or a count below 1.
    """
    if isinstance(checkpoints, Mapping):
        counts: dict[Path, int] = {}
        for path, count in checkpoints.items():
            if int(count) < 1:
                raise ValueError(f"{path}: an ensemble member's count must be >= 1, "
                                 f"not {count}")
            counts[Path(path)] = counts.get(Path(path), 0) + int(count)
    else:
        counts = dict(Counter(Path(path) for path in checkpoints))
    if not counts:
        raise ValueError("an ensemble needs at least one checkpoint")
    return counts


def ensemble_rates(checkpoints: Iterable[str | Path] | Mapping[str | Path, int], *,
                   train_heldin: Any, eval_heldin: Any,
                   device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Mean of the six submission arrays over checkpoint files, loading one at a time.

    Args:
        checkpoints: a list of files, each repeat counting once more, or {file:
            multiplicity} (`member_counts`); either way each distinct file's model runs
            once and counts as often as it is listed.
        train_heldin, eval_heldin: the phase's held-in spikes (as `snapshot_rates`).
        device: where the models run.

    Returns:
        The float32 mean of the members' six rate arrays. Peak memory is one member's
        rates plus one float64 sum, whatever the size.
    """
    counts = member_counts(checkpoints)
    running = RunningMean()
    for path, count in tqdm(list(counts.items()), desc="ensemble", unit="model",
                            disable=not sys.stderr.isatty()):
        logger.info("rates of %s%s", path, f" (x{count})" if count != 1 else "")
        # No reference to a member's rates outlives `add`: peak memory is one member.
        rates, _ = snapshot_rates(path, train_heldin=train_heldin, eval_heldin=eval_heldin,
                                  device=device)
        running.add(rates, count=count)
    return running.mean()
