"""Trial schedulers: how long each trial of a search trains.

    fifo  every trial trains to its end (AESMTE3's search, the default)
    asha  asynchronous successive halving (Li et al. 2020): at rungs of GRACE x 3^k epochs
          a trial continues only if its objective is in the top third of the trials that
          reached that rung; the others stop there, keeping the snapshots they wrote

The skopt searcher is told a stopped trial's last reported objective (its best value up
to the rung where it stopped). That value is what the trial reached, not what it would
have reached: for a loss it is an upper bound, so the Gaussian process learns that region
as no better than it looked when it was stopped, which is why it was stopped.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

#: The scheduler names `run_hyperopt.py --scheduler` accepts.
SCHEDULERS = ("fifo", "asha")
#: ASHA keeps the best 1 / REDUCTION_FACTOR of the trials at each rung.
REDUCTION_FACTOR = 3


def asha_grace(epochs: int, val_interval: int) -> int:
    """The first rung, in epochs: a ninth of training (so rungs sit at 1/9, 1/3 and all of
    it), at least one validation, and a whole number of validations."""
    grace = max(val_interval, epochs // REDUCTION_FACTOR ** 2)
    return -(-grace // val_interval) * val_interval


def build_scheduler(name: str, *, epochs: int, val_interval: int) -> TrialScheduler | None:
    """The Tune scheduler for `name` (None: Tune's FIFO). The metric and its direction
    come from the TuneConfig."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    if name == "fifo":
        return None
    return ASHAScheduler(time_attr="epoch", max_t=epochs, reduction_factor=REDUCTION_FACTOR,
                         grace_period=asha_grace(epochs, val_interval))
