"""Bayesian hyperparameter search on Ray Tune: the only module that imports Ray or skopt.

The original searched with Ray's `SkOptSearch` (removed from Ray in 2.11) and skopt's
defaults: a Gaussian-process surrogate, the "gp_hedge" acquisition and 10 random initial
points. `SkoptSearcher` drives `skopt.Optimizer` with the same settings through ask/tell,
and fixes what the original lacked (original_pipeline.md §5, §10 #6, #12, #13):

- it is seeded (`--seed`), and each trial gets its own seed `seed + trial index`;
- trials that run at the same time get distinct points (constant liar: pending points are
  told to a copy of the optimizer with the best value seen so far before asking);
- its state (the optimizer with its observations and random state, the pending trials)
  is saved with the experiment, so a resumed search continues its model;
- no GPU in the cluster means CPU trials with a warning, not a search that waits forever;
- re-running the same command continues the experiment, `--fresh` starts a new one next
  to it; nothing is deleted.

Layout: RAY_TUNE_HOME/<name>/<experiment>/ holds Ray's experiment state, our
`experiment_info.json` (settings, versions, sessions), `base_config.yaml`,
`search_space.json` and `trials.csv`, and one folder per trial,
`trial_<index>_<trial id>/`, which is the trial's `train_model` run folder (config.yaml,
run_info.json, metrics.csv, trial.log, ckpts/<trial id>.{lve,lfve,cobps}.pth, state.pt)
plus Ray's params.json / result.json / progress.csv.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.metadata
import json
import logging
import math
import os
import pickle
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import ray
import skopt
from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher
from skopt.space import Categorical, Integer, Real

from .atomic import atomic_write, write_text_atomic
from .search_space import Dimension, to_json

logger = logging.getLogger(__name__)

#: objective -> direction; the default is the original's (minimise best masked loss).
OBJECTIVES = {"best_masked_loss": "min", "best_val_cobps": "max"}
#: skopt settings of the original (SkOptSearch with skopt's defaults).
N_INITIAL_POINTS = 10
ACQ_FUNC = "gp_hedge"
#: `--smoke-test`: a few epochs, so a real search finishes in seconds (CI).
SMOKE_OVERRIDES = {
    "TRAIN.NUM_UPDATES": 4, "TRAIN.VAL_INTERVAL": 2, "TRAIN.PATIENCE": 1000,
    "TRAIN.LOG_INTERVAL": 2, "TRAIN.CHECKPOINT_INTERVAL": 2,
    "TRAIN.MASK_SPAN_RAMP_START": 1, "TRAIN.MASK_SPAN_RAMP_END": 3,
}
SMOKE_SAMPLES = 2
DEFAULT_SAMPLES = 100
#: keys a suggestion carries besides the searched config keys.
TRIAL_INDEX_KEY = "TRIAL_INDEX"
INFO_FILE = "experiment_info.json"
_VERSIONED = ("nlb-ndt", "ray", "scikit-optimize", "scikit-learn", "numpy", "scipy",
              "torch", "nlb-tools", "pandas", "yacs")


# ---------------------------------------------------------------------------- searcher
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


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


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
        self._opt = skopt.Optimizer(
            skopt_dimensions(self.dims), base_estimator="GP",
            n_initial_points=self.n_initial_points, acq_func=ACQ_FUNC,
            random_state=self.seed,
            # Only the latest surrogate is needed; keeps the saved state small.
            model_queue_size=1,
        )
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
        return {
            "format": 1, "search_space": to_json(self.dims), "seed": self.seed,
            "metric": self._metric, "mode": self._mode,
            "n_initial_points": self.n_initial_points, "n_suggested": self._n_suggested,
            "pending": dict(self._pending), "last": dict(self._last),
            # The whole optimizer: its observations (Xi, yi), surrogate, hedge gains and
            # random state, so a restored searcher asks exactly what this one would.
            "optimizer": self._opt,
            "Xi": list(self._opt.Xi), "yi": [float(y) for y in self._opt.yi],
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
        self._opt = state["optimizer"]

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


class _SampleBudget(SearchGenerator):
    """Ray's SearchGenerator, except that a restored experiment takes its sample budget
    (and concurrency) from experiment_info.json rather than from the first run.

    Ray restores an experiment with the `num_samples` it started with and has no public
    way to change it (restore is meant for fault tolerance). Re-running with a larger
    `--samples` must add trials, so the budget lives in our own file, which
    `run_search` rewrites before every fit.
    """

    def __init__(self, searcher: Searcher, samples: int, info_file: str):
        super().__init__(searcher)
        self._budget = int(samples)
        self._info_file = info_file

    def add_configurations(self, experiments) -> None:
        super().add_configurations(experiments)
        self._total_samples = self._budget

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        budget, concurrency = self._budget, None
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(Path(self._info_file).read_text())
            budget, concurrency = int(info["samples"]), int(info["max_concurrent"])
        self._total_samples = budget
        self._finished = False  # finished is `counter >= total`; never latched
        if concurrency and isinstance(self.searcher, ConcurrencyLimiter):
            self.searcher.max_concurrent = concurrency


# ---------------------------------------------------------------------------- trainable
def _trial_dirname(trial) -> str:
    """Trial folder name: `trial_<index>_<ray trial id>` (sorts in suggestion order)."""
    index = trial.config.get(TRIAL_INDEX_KEY, 0)
    return f"trial_{int(index):04d}_{trial.trial_id}"


def _plain(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    return str(value)


def run_trial(config: dict, *, base_cfg: str, experiment_dir: str) -> None:
    """Ray Tune function trainable: train one model with the suggested hyperparameters.

    The run folder is the trial's own folder under `experiment_dir` (Ray's
    `get_trial_dir()` is a local staging copy in Ray's temp dir, and the worker's working
    directory is moved there too, so neither is used). Metrics go to Tune after every
    validation; a restarted trial continues from its `state.pt`.

    Args:
        config: the suggestion (dotted config keys, "SEED", "TRIAL_INDEX").
        base_cfg: the experiment's resolved config (YAML text).
        experiment_dir: RAY_TUNE_HOME/<name>/<experiment> on shared storage.
    """
    from .config import apply_overrides, load_config_text
    from .train import train_model

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = Path(experiment_dir) / Path(ctx.get_trial_dir()).name
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in config.items() if k != TRIAL_INDEX_KEY}
    # Snapshots go into the trial's own folder (the rendered config's CHECKPOINT_DIR is
    # for single runs), as the original's trainable did; relative to run_dir.
    overrides.update({"TRAIN.TUNE_MODE": True, "CHECKPOINT_DIR": "ckpts/"})
    cfg = apply_overrides(load_config_text(base_cfg), overrides)
    cfg.freeze()

    # Ray workers have no logging set up: keep the library's log in the trial folder.
    pkg_logger = logging.getLogger("nlb_ndt")
    handler = logging.FileHandler(run_dir / "trial.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = pkg_logger.level
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO)
    reported = []

    def report(metrics: dict) -> None:
        # Ray reads a "done" key as "stop this trial now"; train_model still has files to
        # write after its last report, so it travels as "finished".
        out = {k: _plain(v) for k, v in metrics.items() if k != "done"}
        out["finished"] = bool(metrics.get("done", False))
        out["seed"] = int(cfg.SEED)
        reported.append(out)
        tune.report(out)

    try:
        logger.info("trial %s (seed %d) in %s", trial_id, cfg.SEED, run_dir)
        final = train_model(cfg, run_dir=run_dir, trial_id=trial_id, report=report)
        if not reported:  # a finished run resumed: its results still reach Tune
            report(final)
    except Exception:
        logger.exception("trial %s failed", trial_id)
        raise
    finally:
        pkg_logger.removeHandler(handler)
        pkg_logger.setLevel(old_level)
        handler.close()


# ---------------------------------------------------------------------------- launcher
@dataclass
class SearchSummary:
    """What a search left behind.

    Attributes:
        experiment_dir: RAY_TUNE_HOME/<name>/<experiment>.
        objective, mode: the metric the searcher optimised and its direction.
        trials: one dict per trial: trial_id, status ("done", "stopped" or "error"),
            the objective's value, seed, run_dir and the searched hyperparameters.
    """

    experiment_dir: Path
    objective: str
    mode: str
    trials: list[dict] = field(default_factory=list)

    def best(self) -> dict | None:
        """The trial with the best finite objective (None if there is none)."""
        scored = [t for t in self.trials if _finite(t.get(self.objective)) is not None]
        if not scored:
            return None
        sign = 1 if self.mode == "min" else -1
        return min(scored, key=lambda t: sign * t[self.objective])

    def format_report(self, top: int = 10) -> str:
        """A plain-text table of the `top` trials by objective, plus what needs doing."""
        key, sign = self.objective, 1 if self.mode == "min" else -1
        scored = sorted((t for t in self.trials if _finite(t.get(key)) is not None),
                        key=lambda t: sign * t[key])
        lines = [f"{self.experiment_dir}: {len(self.trials)} trials; best {top} by {key}:",
                 f"{'trial':<10} {'status':<8} {key:>18} {'best_val_cobps':>15} {'seed':>6}"]
        for t in scored[:top]:
            cobps = _finite(t.get("best_val_cobps"))
            lines.append(f"{t['trial_id']:<10} {t['status']:<8} {t[key]:>18.5f} "
                         f"{cobps if cobps is not None else math.nan:>15.4f} {t['seed']:>6}")
        failed = sum(t["status"] == "error" for t in self.trials)
        stopped = sum(t["status"] == "stopped" for t in self.trials)
        if failed:
            lines.append(f"{failed} trial(s) failed: see error.txt and trial.log in their "
                         f"folders")
        if stopped:
            lines.append(f"{stopped} trial(s) unfinished: run the same command again to "
                         f"continue")
        return "\n".join(lines)


def experiment_series(storage: Path, base: str) -> list[Path]:
    """Existing experiments `base`, `base-2`, `base-3`, ... under `storage`, in order."""
    found = []
    if (storage / base).is_dir():
        found.append((1, storage / base))
    for path in storage.glob(f"{base}-*"):
        suffix = path.name[len(base) + 1:]
        if path.is_dir() and suffix.isdigit():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def choose_experiment(storage: Path, base: str, *, fresh: bool) -> Path:
    """The newest experiment of the series (to continue), or a new one with `fresh`."""
    series = experiment_series(storage, base)
    if not series:
        return storage / base
    if not fresh:
        return series[-1]
    last = series[-1].name
    n = int(last.rsplit("-", 1)[1]) if last != base else 1
    return storage / f"{base}-{n + 1}"


def _restorable(exp_dir: Path) -> bool:
    return (tune.Tuner.can_restore(str(exp_dir))
            and any(exp_dir.glob("experiment_state-*.json")))


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries a search result depends on."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _check_same_experiment(exp_dir: Path, cfg_text: str, dims: Mapping[str, Dimension],
                           objective: str) -> None:
    """A continued experiment must keep its config, search space and objective."""
    problems = []
    saved_cfg = exp_dir / "base_config.yaml"
    if saved_cfg.exists() and saved_cfg.read_text() != cfg_text:
        problems.append(f"the config differs from {saved_cfg}")
    saved_space = exp_dir / "search_space.json"
    if saved_space.exists() and json.loads(saved_space.read_text()) != to_json(dims):
        problems.append(f"the search space differs from {saved_space}")
    info_path = exp_dir / INFO_FILE
    if info_path.exists():
        saved_objective = json.loads(info_path.read_text()).get("objective")
        if saved_objective and saved_objective != objective:
            problems.append(f"it optimises {saved_objective}, not {objective}")
    if problems:
        raise ValueError(f"cannot continue {exp_dir}: {'; '.join(problems)}. Start a new "
                         f"experiment next to it with --fresh, or undo the change")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plan_resources(cpus_per_trial: float, gpus_per_trial: float,
                    max_concurrent: int | None) -> tuple[float, float, int]:
    """Fit the per-trial request to the cluster so that trials can start at all."""
    cluster = ray.cluster_resources()
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if gpus_per_trial > 0 and gpus == 0:
        logger.warning("no GPU in the Ray cluster: trials run on CPUs "
                       "(gpus per trial %g -> 0)", gpus_per_trial)
        gpus_per_trial = 0.0
    if cpus and cpus_per_trial > cpus:
        logger.warning("the cluster has %g CPUs: cpus per trial %g -> %g", cpus,
                       cpus_per_trial, cpus)
        cpus_per_trial = cpus
    if max_concurrent is None:
        fits = [cpus // cpus_per_trial] if cpus_per_trial > 0 and cpus else []
        if gpus_per_trial > 0:
            fits.append(math.floor(gpus / gpus_per_trial + 1e-9))
        max_concurrent = int(max(1, min(fits))) if fits else 1
    return cpus_per_trial, gpus_per_trial, int(max_concurrent)


def _summarise(results, exp_dir: Path, objective: str, mode: str,
               dims: Mapping[str, Dimension]) -> SearchSummary:
    summary = SearchSummary(exp_dir, objective, mode)
    for result in results:
        metrics = result.metrics or {}
        config = result.config or metrics.get("config", {}) or {}
        status = ("error" if result.error else
                  "done" if metrics.get("finished") else "stopped")
        # Errored trials may have reported nothing: the id ends the folder name.
        trial_id = metrics.get("trial_id") or Path(result.path).name.rsplit("_", 1)[-1]
        row = {"trial_id": trial_id,
               "status": status, objective: metrics.get(objective),
               "best_val_cobps": metrics.get("best_val_cobps"),
               "epoch": metrics.get("epoch"), "seed": config.get("SEED"),
               "trial_index": config.get(TRIAL_INDEX_KEY),
               "run_dir": str(exp_dir / Path(result.path).name)}
        row.update({key: config.get(key) for key in dims})
        summary.trials.append(row)
    summary.trials.sort(key=lambda t: (t["trial_index"] is None, t["trial_index"]))
    return summary


def _write_trials_csv(summary: SearchSummary) -> None:
    if not summary.trials:
        return
    with atomic_write(summary.experiment_dir / "trials.csv") as tmp, \
            open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary.trials[0]))
        writer.writeheader()
        writer.writerows(summary.trials)


def run_search(name: str, *, samples: int | None = None, seed: int = 42,
               objective: str = "best_masked_loss", gpus_per_trial: float = 0.5,
               cpus_per_trial: float = 3, max_concurrent: int | None = None,
               address: str | None = None, smoke_test: bool = False, fresh: bool = False,
               opts: Sequence[str] = (), bin_ms: int | None = None, paths=None,
               num_cpus: int | None = None, ray_temp_dir: str | None = None,
               verbose: int = 1) -> SearchSummary:
    """Run (or continue) the Bayesian search for run name `name` on Ray Tune.

    Reads CONFIG_DIR/<name>.yaml and its search space (TRAIN.TUNE_HP_JSON), builds the
    cached tensors if needed, then runs trials until the experiment holds `samples`.
    The experiment is RAY_TUNE_HOME/<name>/<name>-s<seed>[-cobps][-smoke][-<n>] (-cobps
    when maximising val co-bps, -<n> for the n-th `fresh` one).

    Args:
        name: a dataset name or "synthetic" (a rendered config must exist).
        samples: trials the experiment should hold (default 100; 2 with smoke_test).
        seed: seeds the searcher; trial i trains with seed + i.
        objective: "best_masked_loss" (minimised) or "best_val_cobps" (maximised).
        gpus_per_trial, cpus_per_trial: Ray resources per trial (fractions pack trials
            onto a GPU). Without GPUs in the cluster trials run on CPUs.
        max_concurrent: trials at once (default: as many as the resources allow).
        address: join this Ray cluster instead of starting a local one.
        smoke_test: a few epochs per trial (SMOKE_OVERRIDES), in a "-smoke" experiment.
        fresh: start a new experiment next to the newest one instead of continuing it.
        opts: extra config overrides ["KEY", "VALUE", ...] (not for searched keys).
        bin_ms: train on this bin width instead of the config's DATA.BIN_MS (e.g. 20 for
            NLB's 20 ms track); a different width is a different run, named
            "<name>_<bin_ms>" as NLB names the groups (e.g. mc_maze_small_20).
        paths: `nlb_ndt.paths.Paths` (default: from the environment).
        num_cpus: CPUs of a local Ray (default: all).
        ray_temp_dir: Ray's temp dir for a local Ray (keep it short: unix sockets).
        verbose: Ray Tune verbosity (0-3).

    Returns:
        A SearchSummary of every trial of the experiment.
    """
    from .config import apply_overrides, load_config
    from .datasets import check_bin_ms
    from .paths import get_paths
    from .preprocess import build_tensors
    from .search_space import load_search_space

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; "
                         f"choose from {', '.join(OBJECTIVES)}")
    mode = OBJECTIVES[objective]
    if len(opts) % 2:
        raise ValueError(f"--opts takes KEY VALUE pairs, got {len(opts)} items: {list(opts)}")
    paths = paths or get_paths()
    cfg_path = paths.config_dir / f"{name}.yaml"
    if not cfg_path.is_file():
        from .config import template_names

        raise FileNotFoundError(f"no config {cfg_path}; run `python generate_all_configs.py` "
                                f"(or set CONFIG_DIR). Known names: "
                                f"{', '.join(template_names())}")
    cfg = load_config(cfg_path, list(opts), freeze=False)
    if bin_ms is not None and int(bin_ms) != int(cfg.DATA.BIN_MS):
        cfg.DATA.BIN_MS = check_bin_ms(int(bin_ms))
        name = f"{name}_{bin_ms}"  # its own run: trials of different widths never mix
    if smoke_test:
        cfg = apply_overrides(cfg, SMOKE_OVERRIDES)
    dims = load_search_space(cfg.TRAIN.TUNE_HP_JSON, cfg)
    clash = sorted(set(opts[0::2]) & set(dims))
    if clash:
        raise ValueError(f"{', '.join(clash)} is searched ({cfg.TRAIN.TUNE_HP_JSON}); "
                         f"remove it from --opts or from the search space")
    cfg.freeze()
    cfg_text = cfg.dump()
    samples = samples or (SMOKE_SAMPLES if smoke_test else DEFAULT_SAMPLES)

    storage = paths.ray_tune_home / name
    # The original's "<name>-s<seed>" spirit; a non-default objective or a smoke test is a
    # different experiment, so it gets its own series.
    base = (f"{name}-s{seed}" + ("" if objective == "best_masked_loss" else "-cobps")
            + ("-smoke" if smoke_test else ""))
    exp_dir = choose_experiment(storage, base, fresh=fresh)
    resume = _restorable(exp_dir)
    if resume:
        _check_same_experiment(exp_dir, cfg_text, dims, objective)
    logger.info("%s experiment %s (%d samples)", "continuing" if resume else "new",
                exp_dir, samples)

    # Data first: trials only read the cache, and must not race to build it.
    build_tensors(cfg.DATA.DATASET, phase="val", bin_ms=cfg.DATA.BIN_MS, paths=paths)

    started_ray = False
    if not ray.is_initialized():
        runtime_env = {"env_vars": paths.as_env()}
        if address:
            ray.init(address=address, runtime_env=runtime_env)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=num_cpus, _temp_dir=ray_temp_dir, include_dashboard=False,
                     runtime_env=runtime_env, log_to_driver=verbose > 1)
        started_ray = True
    try:
        cpus_per_trial, gpus_per_trial, max_concurrent = _plan_resources(
            cpus_per_trial, gpus_per_trial, max_concurrent)
        exp_dir.mkdir(parents=True, exist_ok=True)
        info_path = exp_dir / INFO_FILE
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        sessions = info.get("sessions", [])
        sessions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "host": socket.gethostname(), "samples": samples,
                         "argv": sys.argv, "versions": library_versions()})
        info.update({
            "name": name, "experiment": exp_dir.name, "dataset": cfg.DATA.DATASET,
            "bin_ms": int(cfg.DATA.BIN_MS), "objective": objective, "mode": mode,
            "seed": seed, "trial_seeds": "seed + trial index", "samples": samples,
            "max_concurrent": max_concurrent, "smoke_test": smoke_test,
            "resources_per_trial": {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
            "address": address, "config_file": str(cfg_path), "opts": list(opts),
            "searcher": {"library": "scikit-optimize", "base_estimator": "GP",
                         "acq_func": ACQ_FUNC, "n_initial_points": N_INITIAL_POINTS,
                         "random_state": seed, "pending_trials": "constant liar (cl_min)"},
            "search_space": to_json(dims), "versions": library_versions(),
            "sessions": sessions,
        })
        _write_json(info_path, info)
        if not resume:
            write_text_atomic(exp_dir / "base_config.yaml", cfg_text)
            _write_json(exp_dir / "search_space.json", to_json(dims))

        trainable = tune.with_resources(
            tune.with_parameters(run_trial, base_cfg=cfg_text, experiment_dir=str(exp_dir)),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if resume:
            # Restores the searcher, the sample budget (from experiment_info.json) and the
            # trials; unfinished trials continue, finished ones are kept as they are.
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        else:
            searcher = SkoptSearcher(dims, metric=objective, mode=mode, seed=seed)
            search_alg = _SampleBudget(ConcurrencyLimiter(searcher, max_concurrent),
                                       samples, str(info_path))
            reporter = tune.CLIReporter(
                metric_columns={objective: objective, "best_val_cobps": "best co-bps",
                                "masked_loss": "masked loss", "epoch": "epoch"},
                parameter_columns={"SEED": "seed"}, sort_by_metric=True,
                max_report_frequency=30)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg, metric=objective, mode=mode,
                    num_samples=samples, trial_name_creator=_trial_dirname,
                    trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(
                    name=exp_dir.name, storage_path=str(storage),
                    # One retry (from the trial's own state.pt) for transient failures
                    # such as running out of GPU memory; after that the trial is recorded
                    # as errored and the search goes on.
                    failure_config=tune.FailureConfig(max_failures=1, fail_fast=False),
                    progress_reporter=reporter, verbose=verbose))
        # Ray's newer console output ignores progress reporters; ours shows the objective.
        with _env(RAY_AIR_NEW_OUTPUT="0"):
            results = tuner.fit()
        summary = _summarise(results, exp_dir, objective, mode, dims)
        _write_trials_csv(summary)
        return summary
    finally:
        if started_ray:
            ray.shutdown()
