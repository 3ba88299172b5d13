"""The Bayesian searcher: skopt's Gaussian process driven through Ray Tune's Searcher API.

The original searched with Ray's `SkOptSearch` (removed from Ray in 2.11) and skopt's
defaults: a Gaussian-process surrogate, the "gp_hedge" acquisition and 10 random initial
points. `SkoptSearcher` drives `skopt.Optimizer` with the same settings through ask/tell,
and adds what the original lacked:

- it is seeded (`--seed`), and each trial gets its own seed `seed + trial index`;
- trials that run at the same time get distinct points (constant liar: pending points are
  told to a copy of the optimizer with the best value seen so far before asking);
- its state (the optimizer with its observations and random state, the pending trials)
  is saved with the experiment, so a resumed search continues its model; and when a
  library upgrade makes the pickled optimizer unreadable, it is rebuilt from the saved
  search space, seed and observations (`restore_optimizer`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import skopt
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from skopt.space import Categorical, Integer, Real

from nlb_ndt.config.search_space import Dimension, to_json
from nlb_ndt.hyperopt.budget import past, read_deadline
from nlb_ndt.hyperopt.ray_compat import set_sample_budget

logger = logging.getLogger(__name__)

#: skopt settings of the original (SkOptSearch with skopt's defaults).
N_INITIAL_POINTS = 10
ACQ_FUNC = "gp_hedge"
#: The key a suggestion carries besides the searched config keys and "SEED".
TRIAL_INDEX_KEY = "TRIAL_INDEX"


def skopt_dimensions(dims: Mapping[str, Dimension]) -> list:
    """skopt dimensions for our search space (randint's upper bound is excluded)."""
    out = []
    for key, dim in dims.items():
        if dim.sample_fn == "uniform":
            out.append(Real(dim.low, dim.high, prior="uniform", name=key))
        elif dim.sample_fn == "loguniform":
            out.append(Real(dim.low, dim.high, prior="log-uniform", name=key))
        elif dim.sample_fn == "randint":
            out.append(Integer(dim.low, dim.high - 1, name=key))
        else:
            out.append(Categorical(list(dim.opts), name=key))
    return out


def _native(dim: Dimension, value: Any) -> Any:
    """skopt's numpy scalars -> the python int / float / option yacs accepts."""
    if dim.sample_fn == "randint":
        return int(value)
    if dim.sample_fn == "choice":
        for opt in dim.opts:  # return the option object itself, not numpy's copy
            if opt == value or str(opt) == str(value):
                return opt
        raise ValueError(f"{dim.key}: {value!r} is not one of {dim.opts}")
    return float(value)


def _plain_number(value: Any) -> Any:
    """numpy scalars in a point -> python numbers (the state stays plain)."""
    return value.item() if isinstance(value, np.generic) else value


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def new_optimizer(dims: Mapping[str, Dimension], *, seed: int,
                  n_initial_points: int = N_INITIAL_POINTS) -> skopt.Optimizer:
    """skopt's Optimizer with the original's settings, seeded."""
    return skopt.Optimizer(
        skopt_dimensions(dims), base_estimator="GP", n_initial_points=n_initial_points,
        acq_func=ACQ_FUNC, random_state=seed,
        # Only the latest surrogate is needed; keeps the saved state small.
        model_queue_size=1)


def restore_optimizer(blob: Any, dims: Mapping[str, Dimension], *, seed: int,
                      n_initial_points: int, xi: list, yi: list) -> skopt.Optimizer:
    """The saved optimizer (`blob`: its pickle, or the object), else one rebuilt from the
    search space, the seed and the observations (Xi, yi).

    The pickle holds scikit-optimize's and scikit-learn's own classes, which a library
    upgrade in the middle of a multi-day search can make unreadable; the observations are
    plain lists, so the search continues with its model refitted on every earlier point
    (only the random stream and the hedge's gains start again).
    """
    try:
        opt = pickle.loads(blob) if isinstance(blob, bytes) else blob
        if not isinstance(opt, skopt.Optimizer):
            raise TypeError(f"expected a skopt.Optimizer, got {type(opt).__name__}")
        return opt
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means: rebuild
        logger.warning("the saved skopt optimizer cannot be loaded (%s: %s); rebuilding it "
                       "from the search space, seed %d and %d observations", type(exc).__name__,
                       str(exc).splitlines()[0] if str(exc) else "", seed, len(yi))
    opt = new_optimizer(dims, seed=seed, n_initial_points=n_initial_points)
    if yi:
        opt.tell([list(x) for x in xi], [float(y) for y in yi])
    return opt


class SkoptSearcher(Searcher):
    """A Ray Tune searcher around `skopt.Optimizer` (GP, gp_hedge, 10 random starts).

    Suggestions are {dotted config key: value} plus "SEED" (= seed + trial index) and
    "TRIAL_INDEX" (0, 1, ... in suggestion order). The first `n_initial_points`
    suggestions are random draws that depend only on `seed`.

    Args:
        dims: the search space ({dotted key: Dimension}).
        metric: the objective reported by trials.
        mode: "min" or "max".
        seed: seeds skopt and the per-trial seeds.
        n_initial_points: random points before the surrogate is used.
    """

    def __init__(self, dims: Mapping[str, Dimension], *, metric: str, mode: str, seed: int,
                 n_initial_points: int = N_INITIAL_POINTS):
        super().__init__(metric=metric, mode=mode)
        self.dims = dict(dims)
        self.seed = int(seed)
        self.n_initial_points = int(n_initial_points)
        self._opt = new_optimizer(self.dims, seed=self.seed,
                                  n_initial_points=self.n_initial_points)
        self._pending: dict[str, list] = {}  # trial id -> point being evaluated
        self._last: dict[str, float] = {}  # trial id -> last finite objective reported
        self._n_suggested = 0

    # --- Ray's Searcher interface
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec) -> bool:
        if (metric and self._metric and metric != self._metric) or (
                mode and self._mode and mode != self._mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        x = self._next_point()
        self._pending[trial_id] = x
        index = self._n_suggested
        self._n_suggested += 1
        config = {key: _native(dim, v) for (key, dim), v in zip(self.dims.items(), x)}
        config["SEED"] = self.seed + index
        config[TRIAL_INDEX_KEY] = index
        logger.debug("trial %s (#%d): %s", trial_id, index, config)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = _finite(result.get(self._metric))
        if value is not None:
            self._last[trial_id] = value

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        x = self._pending.pop(trial_id, None)
        last = self._last.pop(trial_id, None)
        if x is None:
            return
        value = _finite((result or {}).get(self._metric))
        if value is None:
            # An errored trial (NaN loss, out of memory) still measured its best value
            # up to the failure; without any, its point is dropped, as the original did.
            value = last
        if value is None:
            logger.warning("trial %s ended without a finite %s; not told to the optimizer",
                           trial_id, self._metric)
            return
        self._opt.tell(x, value if self._mode == "min" else -value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def get_state(self) -> dict:
        """Plain values, plus the optimizer's pickle as bytes (see `restore_optimizer`)."""
        return {
            "format": 2, "search_space": to_json(self.dims), "seed": self.seed,
            "metric": self._metric, "mode": self._mode,
            "n_initial_points": self.n_initial_points, "n_suggested": self._n_suggested,
            "pending": dict(self._pending), "last": dict(self._last),
            # The whole optimizer: its observations, surrogate, hedge gains and random
            # state, so a restored searcher asks exactly what this one would ...
            "optimizer_pickle": pickle.dumps(self._opt),
            # ... and the observations alone, to rebuild it when that pickle cannot load.
            "Xi": [list(map(_plain_number, x)) for x in self._opt.Xi],
            "yi": [float(y) for y in self._opt.yi],
        }

    def set_state(self, state: dict) -> None:
        if state.get("search_space") != to_json(self.dims):
            raise ValueError("the saved searcher state belongs to a different search space; "
                             "start a new experiment with --fresh")
        self.seed = state["seed"]
        self._metric, self._mode = state["metric"], state["mode"]
        self.n_initial_points = state["n_initial_points"]
        self._n_suggested = state["n_suggested"]
        self._pending, self._last = dict(state["pending"]), dict(state["last"])
        # Format 1 (version 0.1) stored the optimizer object itself.
        blob = state.get("optimizer_pickle", state.get("optimizer"))
        self._opt = restore_optimizer(blob, self.dims, seed=self.seed,
                                      n_initial_points=self.n_initial_points,
                                      xi=state.get("Xi", []), yi=state.get("yi", []))

    # Ray pickles the searcher itself into the experiment (tuner.pkl): the optimizer goes
    # in as bytes beside its observations there too, so an upgrade cannot block a resume.
    def __getstate__(self) -> dict:
        fields = dict(self.__dict__)
        fields["_opt"] = self.get_state()
        return fields

    def __setstate__(self, fields: dict) -> None:
        saved = fields["_opt"]
        self.__dict__.update(fields)
        if isinstance(saved, dict):
            self.set_state(saved)

    # --- internals
    @property
    def n_told(self) -> int:
        """Points whose objective the optimizer has been told."""
        return len(self._opt.yi)

    def _next_point(self) -> list:
        pending = list(self._pending.values())
        if not pending or self.n_told + len(pending) < self.n_initial_points:
            # Random phase (draws from the optimizer's seeded stream), or nothing pending.
            x = self._opt.ask()
        else:
            # Constant liar (cl_min): pretend each pending point scored the best value so
            # far, refit a copy, ask it. The copy's random state is drawn from ours, so
            # the sequence stays a function of the seed and the order of events.
            lie = float(np.min(self._opt.yi)) if self._opt.yi else 0.0
            opt = copy.deepcopy(self._opt)  # (skopt's own copy() would refit once more)
            opt.rng = np.random.RandomState(self._opt.rng.randint(0, 2**31 - 1))
            opt.tell(pending, [lie] * len(pending))
            x = opt.ask()
        if x in pending or x in self._opt.Xi:
            # Integer / categorical spaces can run out of new acquisition optima.
            x = self._opt.space.rvs(random_state=self._opt.rng)[0]
        return list(x)


class SampleBudget(SearchGenerator):
    """Ray's SearchGenerator, except that an experiment takes its sample budget (and
    concurrency, and this session's time-budget deadline) from experiment_info.json rather
    than from the session that made it.

    Ray restores an experiment with the `num_samples` it started with and has no public
    way to change it (restore is meant for fault tolerance). Re-running with a larger
    `--samples` must add trials, so the budget lives in our own file, which
    `run_search` rewrites before every fit. Past the session's deadline (`--time-budget`)
    no new trial is suggested.
    """

    def __init__(self, searcher: Searcher, samples: int, info_file: str):
        super().__init__(searcher)
        self._budget = int(samples)
        self._info_file = info_file
        self._deadline: float | None = None

    def add_configurations(self, experiments) -> None:
        super().add_configurations(experiments)
        set_sample_budget(self, self._budget)
        self._deadline = read_deadline(self._info_file)

    def next_trial(self):
        # Experiments pickled before the time budget existed lack the attribute.
        if past(getattr(self, "_deadline", None)):
            return None
        return super().next_trial()

    def restore_from_dir(self, dirpath: str) -> None:
        # The pickled path is where the experiment was made; a moved experiment (or one
        # whose NLB_HOME changed) keeps its budget in the folder it is restored from.
        self._info_file = str(Path(dirpath) / Path(self._info_file).name)
        super().restore_from_dir(dirpath)

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        budget, concurrency = self._budget, None
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(Path(self._info_file).read_text())
            budget, concurrency = int(info["samples"]), int(info["max_concurrent"])
        set_sample_budget(self, budget)
        self._deadline = read_deadline(self._info_file)
        if concurrency and isinstance(self.searcher, ConcurrencyLimiter):
            self.searcher.max_concurrent = concurrency
