"""Trial schedulers: how long each trial of a search trains.

    fifo  every trial trains to its end (AESMTE3's search, the default)
    asha  asynchronous successive halving (Li et al. 2020): at rungs of GRACE x 3^k epochs
          a trial continues only if its objective is in the top third of the trials that
          reached that rung; the others stop there, keeping the snapshots they wrote
    pbt   population-based training as AutoLFADS runs it (Keshtkaran et al. 2022): every
          PERTURBATION_INTERVAL epochs after a burn-in, a trial in the bottom half copies
          the state of one in the top half (through the trials' folders: see the
          trainable) and perturbs its hyperparameters (`PbtExplore`); the profile gives
          the interval, the burn-in and each key's explore weight

The skopt searcher is told a stopped trial's last reported objective (its best value up
to the rung where it stopped). That value is what the trial reached, not what it would
have reached: for a loss it is an upper bound, so the Gaussian process learns that region
as no better than it looked when it was stopped, which is why it was stopped.
"""

from __future__ import annotations

import random
from typing import Any, Mapping

from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining, TrialScheduler

from nlb_ndt.config.search_space import Dimension
from nlb_ndt.hyperopt.searcher import TRIAL_INDEX_KEY

#: The scheduler names `run_hyperopt.py --scheduler` accepts.
SCHEDULERS = ("fifo", "asha", "pbt")
#: PBT: the bottom half of the population copies the top half (AutoLFADS pairs trials in a
#: binary tournament, which moves the same share of the population).
PBT_QUANTILE = 0.5
#: ASHA keeps the best 1 / REDUCTION_FACTOR of the trials at each rung.
REDUCTION_FACTOR = 3


def asha_grace(epochs: int, val_interval: int) -> int:
    """The first rung, in epochs: a ninth of training (so rungs sit at 1/9, 1/3 and all of
    it), at least one validation, and a whole number of validations."""
    grace = max(val_interval, epochs // REDUCTION_FACTOR ** 2)
    return -(-grace // val_interval) * val_interval


class PbtExplore:
    """AutoLFADS's perturbation: each searched key is multiplied by 1 +- U(0.002 w, w) (the
    sign by a coin), w its explore weight, and kept inside its search-space bounds.

    Pickled into the experiment with the PBT scheduler (keep its import path).
    """

    def __init__(self, weights: Mapping[str, float], dims: Mapping[str, Dimension],
                 seed: int = 0):
        self.weights = {k: float(w) for k, w in weights.items()}
        self.bounds = {k: (dims[k].low, dims[k].high) for k in self.weights}
        self.rng = random.Random(seed)

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        config = dict(config)
        for key, weight in self.weights.items():
            factor = self.rng.uniform(0.002 * weight, weight)
            value = config[key] * (1 + factor if self.rng.random() < 0.5 else 1 - factor)
            low, high = self.bounds[key]
            config[key] = float(min(max(value, low), high))
        return config


def build_scheduler(name: str, *, epochs: int, val_interval: int,
                    pbt: Mapping[str, Any] | None = None,
                    dims: Mapping[str, Dimension] | None = None,
                    seed: int = 0) -> TrialScheduler | None:
    """The Tune scheduler for `name` (None: Tune's FIFO). The metric and its direction
    come from the TuneConfig; PBT's settings (perturbation_interval and burn_in in epochs,
    explore: {key: weight}) from the profile."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    if name == "fifo":
        return None
    if name == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=epochs,
                             reduction_factor=REDUCTION_FACTOR,
                             grace_period=asha_grace(epochs, val_interval))
    pbt = dict(pbt or {})
    explore = dict(pbt.get("explore") or {})
    missing = sorted(set(explore) - set(dims or {}))
    if not explore or missing:
        raise ValueError("--scheduler pbt needs a profile with pbt.explore weights for "
                         f"searched keys (e.g. --profile autolfads); not searched: {missing}")
    interval, burn_in = pbt_schedule(pbt, epochs=epochs, val_interval=val_interval)
    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=interval, burn_in_period=burn_in,
        quantile_fraction=PBT_QUANTILE, custom_explore_fn=PbtExplore(explore, dims, seed=seed))


def pbt_schedule(pbt: Mapping[str, Any] | None, *, epochs: int, val_interval: int
                 ) -> tuple[int, int]:
    """PBT's (perturbation interval, burn-in) in epochs, from the profile's. A run too short
    for them (a smoke test) still perturbs: at least four rounds, after a quarter of it."""
    pbt = pbt or {}
    interval = min(int(pbt.get("perturbation_interval", 25)), max(val_interval, epochs // 4))
    burn_in = min(int(pbt.get("burn_in", 0)), epochs // 4)
    return interval, burn_in


def pbt_checkpoints_kept(interval: int, val_interval: int) -> int:
    """How many shared states (Tune checkpoints, one per validation) each PBT trial keeps.

    PBT clones the state a top trial had at its last perturbation, which can be a whole
    interval old when another trial asks for it, and Tune registers that state twice (once
    when reported, once when PBT "saves" it), so a trial keeps two intervals' worth and a
    margin; fewer, and a clone can find its source deleted (Tune then fails the trial).
    """
    per_interval = -(-interval // max(1, val_interval))
    return max(5, 2 * per_interval + 2)


class SeedOfIndex:
    """A PBT trial's seed: the search seed plus its index (as the skopt searcher gives).
    Pickled into the experiment (keep its import path)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __call__(self, config) -> int:
        return self.seed + int(config[TRIAL_INDEX_KEY])


def population_space(dims: Mapping[str, Dimension], samples: int, seed: int) -> dict:
    """Tune's param_space of a PBT population: each searched key drawn from its range, one
    trial per TRIAL_INDEX 0..samples-1, seeded as the skopt searcher seeds its trials."""
    space: dict[str, Any] = {}
    for key, dim in dims.items():
        if dim.sample_fn == "uniform":
            space[key] = tune.uniform(dim.low, dim.high)
        elif dim.sample_fn == "loguniform":
            space[key] = tune.loguniform(dim.low, dim.high)
        elif dim.sample_fn == "randint":
            space[key] = tune.randint(dim.low, dim.high)
        else:
            space[key] = tune.choice(list(dim.opts))
    space[TRIAL_INDEX_KEY] = tune.grid_search(list(range(int(samples))))
    space["SEED"] = tune.sample_from(SeedOfIndex(seed))
    return space
