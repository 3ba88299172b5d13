"""Bayesian hyperparameter search on Ray Tune: the only package that imports Ray or skopt.

- `searcher`: skopt's GP (gp_hedge, 10 random starts) behind Ray's Searcher API, seeded,
  with constant-liar suggestions for concurrent trials and a saved state;
- `trainable`: one trial = one `train_model` run in the trial's own folder;
- `experiment`: names, the experiment record, resources and the summary;
- `search`: `run_search`, which composes them;
- `ray_compat`: the two shims over Ray's private API, pinned to the tested Ray version.
"""

from nlb_ndt.hyperopt.experiment import (
    DEFAULT_SAMPLES,
    SMOKE_OVERRIDES,
    SMOKE_SAMPLES,
    SearchSummary,
    choose_experiment,
    experiment_series,
)
from nlb_ndt.hyperopt.search import run_search
from nlb_ndt.hyperopt.searcher import (
    N_INITIAL_POINTS,
    TRIAL_INDEX_KEY,
    SkoptSearcher,
    skopt_dimensions,
)

__all__ = ["DEFAULT_SAMPLES", "N_INITIAL_POINTS", "SMOKE_OVERRIDES", "SMOKE_SAMPLES",
           "TRIAL_INDEX_KEY", "SearchSummary", "SkoptSearcher", "choose_experiment",
           "experiment_series", "run_search", "skopt_dimensions"]
