"""Choosing an ensemble's members from ranked snapshots, one function per method.

    select_topn    the mean of the top N snapshots for N = 1..M (AESMTE3), N the argmax
    select_greedy  forward selection with replacement (Caruana et al. 2004) for M steps,
                   its best prefix kept; the top-N curve is computed too, for comparison

Both take the snapshots' val `eval_rates_heldout` in ranking order (index 0 = the best
single snapshot by val co-bps; memmaps are fine) and return one `EnsembleChoice`: which
ranking indices are members and how many times each counts, and the curves behind the
choice. Describing a choice is separate: `ensemble_table` / `ensemble_record` (the
content of ensemble.csv / ensemble.json), `write_ensemble_files` and `plot_ensemble`
(ensemble.png). Averaging and scoring live in nlb_ndt.scoring.ensemble; the submission
stage (nlb_ndt.stages.make_submission) composes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from nlb_ndt.atomic import atomic_write, write_text_atomic
from nlb_ndt.scoring import plots
from nlb_ndt.scoring.ensemble import ENSEMBLE_METHODS, choose_size, ensemble_curve, greedy_selection

log = logging.getLogger(__name__)

#: `ensemble_size` meaning "the argmax of the method's val co-bps curve".
AUTO = "auto"
#: How a size given by the user is recorded in `EnsembleChoice.chosen_by`.
BY_OPTION = "--ensemble-size"


@dataclass(frozen=True)
class EnsembleChoice:
    """The members an ensemble method chose, and the val co-bps curves behind the choice.

    Attributes:
        method: "topn" or "greedy".
        members: (ranking index, count) of each distinct member, in order of first pick;
            the counts add up to `chosen_n`.
        curve: val co-bps of the method's ensemble by size: the top-N mean for N = 1..M,
            or greedy's ensemble after each step.
        steps: the ranking index added at each size of `curve` (top-N: 0, 1, ..., M-1).
        topn_curve: val co-bps of the top-N mean for N = 1..M (for greedy, to compare).
        chosen_n: the ensemble size used (members counted with their multiplicities).
        chosen_by: how `chosen_n` was chosen: the argmax of `curve`, or `--ensemble-size`.
        argmax_n: the size with the best val co-bps on `curve` (the smallest on ties).
        chosen_cobps: val co-bps of the chosen ensemble, `curve[chosen_n - 1]`.
    """

    method: str
    members: tuple[tuple[int, int], ...]
    curve: tuple[float, ...]
    steps: tuple[int, ...]
    topn_curve: tuple[float, ...]
    chosen_n: int
    chosen_by: str
    argmax_n: int
    chosen_cobps: float

    @property
    def topn_argmax_n(self) -> int:
        """The size with the best val co-bps on the top-N curve (the smallest on ties)."""
        return choose_size(np.asarray(self.topn_curve))

    @property
    def counts(self) -> dict[int, int]:
        """Ranking index -> multiplicity, in order of first pick."""
        return dict(self.members)


class NpyFiles(AbcSequence):
    """.npy files as a sequence of arrays, each memory-mapped when read and not kept, so a
    selection that reads a few candidates never holds the others, nor their files open."""

    def __init__(self, files: Iterable[str | Path]) -> None:
        self._files = [Path(f) for f in files]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return np.load(self._files[index], mmap_mode="r")


def check_selection(method: str, *, max_ensemble: int, ensemble_size: int | str | None
                    ) -> int | None:
    """Check a selection's arguments before any work; the size asked for (None: "auto").

    Args:
        method: one of ENSEMBLE_METHODS.
        max_ensemble: M, the largest size swept (greedy: the steps it takes), >= 1.
        ensemble_size: "auto" (or None) for the argmax, else N >= 1 (an int or its
            digits); greedy's N cannot exceed its M steps.

    Raises:
        ValueError: naming the option at fault.
    """
    if method not in ENSEMBLE_METHODS:
        raise ValueError(f"unknown ensemble method {method!r}; choose from "
                         f"{', '.join(ENSEMBLE_METHODS)}")
    if isinstance(max_ensemble, bool) or not isinstance(max_ensemble, (int, np.integer)) \
            or max_ensemble < 1:
        raise ValueError(f"--max-ensemble must be a whole number >= 1, not {max_ensemble!r}")
    if ensemble_size is None or ensemble_size == AUTO:
        return None
    if isinstance(ensemble_size, str) and ensemble_size.isdigit():
        ensemble_size = int(ensemble_size)
    if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, (int, np.integer)) \
            or ensemble_size < 1:
        raise ValueError(f"--ensemble-size must be 'auto' or a whole number >= 1, "
                         f"not {ensemble_size!r}")
    if method == "greedy" and ensemble_size > max_ensemble:
        raise ValueError(f"--ensemble-size {ensemble_size}: greedy selection takes "
                         f"--max-ensemble {max_ensemble} steps; raise --max-ensemble")
    return int(ensemble_size)


def select_topn(candidates: Sequence[np.ndarray], eval_spikes_heldout: np.ndarray, *,
                max_ensemble: int = 50, ensemble_size: int | str | None = AUTO
                ) -> EnsembleChoice:
    """The top N snapshots, N the argmax of the top-N val co-bps curve (or as given).

    The curve covers N = 1..M, M = min(max(max_ensemble, ensemble_size), candidates), so
    a given N is always on it. Only the first M candidates are read, one at a time.

    Args:
        candidates: each snapshot's val `eval_rates_heldout`, best val co-bps first.
        eval_spikes_heldout: the val target's held-out spikes, same shape.
        max_ensemble: the largest N swept (M), >= 1.
        ensemble_size: "auto", or N (at most the number of candidates).

    Raises:
        ValueError: a bad argument, or N beyond the candidates.
    """
    size = check_selection("topn", max_ensemble=max_ensemble, ensemble_size=ensemble_size)
    if size is not None and size > len(candidates):
        raise ValueError(f"--ensemble-size {size}: there are only {len(candidates)} "
                         f"candidate snapshots")
    m = min(max(max_ensemble, size or 1), len(candidates))
    curve = ensemble_curve((candidates[i] for i in range(m)), np.asarray(eval_spikes_heldout))
    best = choose_size(curve)
    chosen, how = (size, BY_OPTION) if size is not None else (best, "argmax of val co-bps")
    values = tuple(float(v) for v in curve)
    return EnsembleChoice(method="topn", members=tuple((i, 1) for i in range(chosen)),
                          curve=values, steps=tuple(range(m)), topn_curve=values,
                          chosen_n=chosen, chosen_by=how, argmax_n=best,
                          chosen_cobps=values[chosen - 1])


def select_greedy(candidates: Sequence[np.ndarray], eval_spikes_heldout: np.ndarray, *,
                  max_ensemble: int = 50, ensemble_size: int | str | None = AUTO
                  ) -> EnsembleChoice:
    """Greedy forward selection with replacement over every candidate, for M steps.

    The kept ensemble is greedy's best prefix (or its first N steps, N as given); the
    counts are the selection's own (`GreedySelection.counts`). The top-N curve of the
    first min(M, candidates) snapshots is computed too, so both can be shown.

    Args:
        candidates: each snapshot's val `eval_rates_heldout`, best val co-bps first;
            every one is read at every step, so pass memmaps for big searches.
        eval_spikes_heldout: the val target's held-out spikes, same shape.
        max_ensemble: the steps taken (M), >= 1.
        ensemble_size: "auto", or N <= M.

    Raises:
        ValueError: a bad argument.
    """
    size = check_selection("greedy", max_ensemble=max_ensemble, ensemble_size=ensemble_size)
    spikes = np.asarray(eval_spikes_heldout)
    m = min(max_ensemble, len(candidates))
    topn = ensemble_curve((candidates[i] for i in range(m)), spikes)
    greedy = greedy_selection(candidates, spikes, max_steps=max_ensemble)
    chosen, how = ((size, BY_OPTION) if size is not None
                   else (greedy.best_n, "argmax of greedy val co-bps"))
    return EnsembleChoice(method="greedy", members=tuple(greedy.counts(chosen).items()),
                          curve=tuple(float(v) for v in greedy.curve),
                          steps=tuple(greedy.steps), topn_curve=tuple(float(v) for v in topn),
                          chosen_n=chosen, chosen_by=how, argmax_n=greedy.best_n,
                          chosen_cobps=float(greedy.curve[chosen - 1]))


#: ENSEMBLE_METHODS -> its selection function.
SELECTORS: Mapping[str, Callable[..., EnsembleChoice]] = {
    "topn": select_topn, "greedy": select_greedy}


def _text(value) -> str | None:
    """A ranking's text cell, None when empty (NaN, None or "")."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    return str(value)


def member_record(row: Mapping, count: int = 1) -> dict:
    """One ensemble.json member: a ranking row (models.csv) and its multiplicity."""
    epoch = row.get("epoch")
    return {"trial_id": row["trial_id"], "val_ckpt": row["val_ckpt"],
            "co-bps": float(row["co-bps"]), "path": row["path"],
            "epoch": None if epoch is None or np.isnan(float(epoch)) else int(epoch),
            "count": int(count), "experiment": _text(row.get("experiment")),
            "profile": _text(row.get("profile")), "family": _text(row.get("family"))}


def ensemble_table(choice: EnsembleChoice, rows: Sequence[Mapping]) -> dict[str, list]:
    """ensemble.csv's columns: per size, the top-N co-bps and the member it adds; for
    greedy also its co-bps and the snapshot each step adds (shorter columns padded)."""
    m = len(choice.topn_curve)
    table: dict[str, list] = {
        "n": list(range(1, m + 1)), "co-bps": list(choice.topn_curve),
        "member_trial_id": [r["trial_id"] for r in rows[:m]],
        "member_val_ckpt": [r["val_ckpt"] for r in rows[:m]],
        "member_co-bps": [float(r["co-bps"]) for r in rows[:m]]}
    if choice.method != "greedy":
        return table
    n = max(m, len(choice.steps))
    table = {key: values + [None] * (n - m) for key, values in table.items()}
    table["n"] = list(range(1, n + 1))
    table["greedy_co-bps"] = list(choice.curve) + [None] * (n - len(choice.curve))
    table["greedy_trial_id"] = [rows[i]["trial_id"] for i in choice.steps]
    table["greedy_val_ckpt"] = [rows[i]["val_ckpt"] for i in choice.steps]
    return table


def ensemble_record(name: str, choice: EnsembleChoice, rows: Sequence[Mapping]) -> dict:
    """ensemble.json's content: the choice, its members (ranking rows with counts), both
    curves and the experiments pooled; `rows` are the ranking's records, best first."""
    topn_best = choice.topn_argmax_n
    greedy = choice.method == "greedy"
    members = [member_record(rows[index], count) for index, count in choice.members]
    return {
        "name": name, "method": choice.method, "max_ensemble": len(choice.topn_curve),
        "argmax_n": topn_best, "argmax_co-bps": choice.topn_curve[topn_best - 1],
        "chosen_n": choice.chosen_n, "chosen_by": choice.chosen_by,
        "chosen_co-bps": choice.chosen_cobps, "best_single_co-bps": choice.topn_curve[0],
        "distinct_members": len(members), "members": members,
        "topn_curve": list(choice.topn_curve),
        "greedy_curve": list(choice.curve) if greedy else None,
        "greedy_argmax_n": choice.argmax_n if greedy else None,
        "experiments": sorted({_text(r.get("experiment")) or "" for r in rows}),
    }


def write_ensemble_files(out_dir: str | Path, table: Mapping[str, list], record: Mapping
                         ) -> None:
    """ensemble.csv (`ensemble_table`) and ensemble.json (`ensemble_record`) in `out_dir`."""
    out_dir = Path(out_dir)
    with atomic_write(out_dir / "ensemble.csv") as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    write_text_atomic(out_dir / "ensemble.json", json.dumps(record, indent=2) + "\n")


def plot_ensemble(name: str, choice: EnsembleChoice, path: str | Path) -> Path:
    """ensemble.png: the top-N curve, greedy's when computed, and the size chosen."""
    greedy = choice.curve if choice.method == "greedy" else None
    return plots.plot_ensemble_curve(choice.topn_curve, path, chosen=choice.chosen_n,
                                     argmax=choice.topn_argmax_n, greedy=greedy,
                                     method=choice.method,
                                     title=f"{name}: ensemble size sweep (val)")
