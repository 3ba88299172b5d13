"""`run_search`: the Bayesian search of one run, from its rendered config to a summary.

    plan (config, profile, search space, experiment folder) -> tensors -> Ray (local, or a
    cluster whose nodes must share storage) -> Tuner (new or restored) -> trials.csv
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import ray
from ray import tune

from nlb_ndt.config.defaults import (
    apply_overrides,
    check_opts,
    load_config,
    warn_inert_settings,
)
from nlb_ndt.config.layout import EXPERIMENT_INFO_FILE, OBJECTIVES, SNAPSHOT_KINDS
from nlb_ndt.config.render import Profile, load_profile, template_names
from nlb_ndt.config.search_space import Dimension, load_search_space, parse_search_space
from nlb_ndt.config.typed import train_config
from nlb_ndt.data.preprocess import build_tensors
from nlb_ndt.datasets import check_bin_ms
from nlb_ndt.hyperopt import experiment as ex
from nlb_ndt.hyperopt.budget import BudgetCallback, past, session_deadline
from nlb_ndt.hyperopt.cluster import (
    PendingWatch,
    check_shared_storage,
    connect,
    env_vars,
    tune_settings,
)
from nlb_ndt.hyperopt.ray_compat import configure_session
from nlb_ndt.hyperopt.schedulers import (
    SCHEDULERS,
    build_scheduler,
    pbt_checkpoints_kept,
    pbt_schedule,
    population_space,
)
from nlb_ndt.hyperopt.searcher import SampleBudget, SkoptSearcher
from nlb_ndt.hyperopt.trainable import run_trial, trial_dirname
from nlb_ndt.paths import Paths, get_paths

logger = logging.getLogger(__name__)

#: Search settings when neither the command line nor a profile sets them.
DEFAULT_OBJECTIVE = "best_masked_loss"
DEFAULT_GPUS_PER_TRIAL = 0.5
DEFAULT_CPUS_PER_TRIAL = 3.0


@dataclass
class SearchPlan:
    """Everything decided before Ray starts: what to train, and where."""

    name: str
    cfg_text: str
    dims: dict[str, Dimension]
    dataset: str
    bin_ms: int
    objective: str
    samples: int
    exp_dir: Path
    resume: bool
    profile: Profile | None
    snapshots: tuple[str, ...]
    seed: int
    smoke_test: bool
    opts: tuple
    config_file: Path
    scheduler: str
    epochs: int
    val_interval: int

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    def record(self, *, address: str | None, cpus: float, gpus: float,
               max_concurrent: int) -> dict:
        """The settings experiment_info.json records for this session."""
        return {"name": self.name, "dataset": self.dataset, "bin_ms": self.bin_ms,
                "objective": self.objective, "mode": self.mode, "seed": self.seed,
                "samples": self.samples, "max_concurrent": max_concurrent,
                "smoke_test": self.smoke_test, "address": address,
                "profile": self.profile.name if self.profile else None,
                "snapshots": list(self.snapshots),
                "resources_per_trial": {"cpu": cpus, "gpu": gpus},
                "config_file": str(self.config_file), "opts": list(self.opts),
                "scheduler": self.scheduler}


def plan_search(name: str, *, paths: Paths, samples: int | None, seed: int,
                objective: str, smoke_test: bool, fresh: bool, opts: Sequence[str],
                bin_ms: int | None, profile: Profile | None,
                scheduler: str = "fifo") -> SearchPlan:
    """Resolve the config (rendered config <- profile <- smoke test <- opts), the search
    space and the experiment folder; check that a continued experiment is unchanged."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    opts = check_opts(opts)
    cfg_path = paths.config_dir / f"{name}.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no config {cfg_path}; run `python generate_all_configs.py` "
                                f"(or set CONFIG_DIR). Known names: "
                                f"{', '.join(template_names())}")
    cfg = load_config(cfg_path, freeze=False)
    if profile is not None:
        cfg = apply_overrides(cfg, profile.config_for(name))
    if opts:
        cfg.merge_from_list(list(opts))
    if bin_ms is not None and int(bin_ms) != int(cfg.DATA.BIN_MS):
        cfg.DATA.BIN_MS = check_bin_ms(int(bin_ms))
        name = f"{name}_{bin_ms}"  # its own run: trials of different widths never mix
    if smoke_test:
        cfg = apply_overrides(cfg, ex.SMOKE_OVERRIDES)
    dims = {} if profile and profile.search_space_only else \
        load_search_space(cfg.TRAIN.TUNE_HP_JSON, cfg)
    if profile is not None and profile.search_space:
        dims.update(parse_search_space(profile.search_space, cfg,
                                       source=f"profile {profile.name}"))
    clash = sorted(set(opts[0::2]) & set(dims))
    if clash:
        raise ValueError(f"{', '.join(clash)} is searched ({cfg.TRAIN.TUNE_HP_JSON}); "
                         f"remove it from --opts or from the search space")
    cfg.freeze()
    warn_inert_settings(cfg, ndt_cache_dir=paths.ndt_cache_dir)
    storage = paths.ray_tune_home / name
    base = ex.experiment_base(name, seed, objective=objective, smoke_test=smoke_test,
                              profile=profile.name if profile else None)
    exp_dir = ex.choose_experiment(storage, base, fresh=fresh)
    resume = ex.restorable(exp_dir)
    cfg_text = cfg.dump()
    if resume:
        ex.check_same_experiment(exp_dir, cfg_text, dims, objective, scheduler)
    samples = samples or (ex.SMOKE_SAMPLES if smoke_test else ex.DEFAULT_SAMPLES)
    snapshots = tuple(profile.snapshots) if profile and profile.snapshots else SNAPSHOT_KINDS
    train = train_config(cfg.TRAIN)
    return SearchPlan(name, cfg_text, dims, cfg.DATA.DATASET, int(cfg.DATA.BIN_MS),
                      objective, samples, exp_dir, resume, profile, snapshots, seed,
                      smoke_test, tuple(opts), cfg_path, scheduler, train.stop_epoch,
                      train.val_interval)


def _tuner(plan: SearchPlan, *, seed: int, cpus: float, gpus: float, max_concurrent: int,
           verbose: int, deadline: float | None) -> tune.Tuner:
    """A new Tuner for a new experiment, or the restored one (searcher, budget, trials)."""
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base_cfg=plan.cfg_text,
                             experiment_dir=str(plan.exp_dir), deadline=deadline,
                             shared_states=_shared_states_kept(plan)),
        {"cpu": cpus, "gpu": gpus})
    if plan.resume:
        # Unfinished trials continue from their state.pt; finished ones are kept as they are.
        return tune.Tuner.restore(str(plan.exp_dir), trainable=trainable,
                                  resume_unfinished=True, resume_errored=False,
                                  restart_errored=False)
    if plan.scheduler == "pbt":
        # Tune's PBT refuses searchers: the population is drawn by Tune's own generator,
        # seeded, one trial per index (so its size is fixed when the experiment starts).
        search_alg = ray.tune.search.BasicVariantGenerator(random_state=seed,
                                                          max_concurrent=max_concurrent)
        param_space, num_samples = population_space(plan.dims, plan.samples, seed), 1
    else:
        searcher = SkoptSearcher(plan.dims, metric=plan.objective, mode=plan.mode, seed=seed)
        search_alg = SampleBudget(ray.tune.search.ConcurrencyLimiter(searcher, max_concurrent),
                                  plan.samples, str(plan.exp_dir / EXPERIMENT_INFO_FILE))
        param_space, num_samples = None, plan.samples
    reporter = tune.CLIReporter(
        metric_columns={plan.objective: plan.objective, "best_val_cobps": "best co-bps",
                        "masked_loss": "masked loss", "epoch": "epoch"},
        parameter_columns={"SEED": "seed"}, sort_by_metric=True, max_report_frequency=30)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, metric=plan.objective, mode=plan.mode,
            scheduler=build_scheduler(plan.scheduler, epochs=plan.epochs,
                                      val_interval=plan.val_interval, dims=plan.dims,
                                      pbt=plan.profile.pbt if plan.profile else None,
                                      seed=seed),
            num_samples=num_samples, trial_name_creator=trial_dirname,
            trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=plan.exp_dir.name, storage_path=str(plan.exp_dir.parent),
            # One retry (from the trial's own state.pt) for transient failures such as a
            # lost node or running out of GPU memory; then the trial is recorded as errored.
            failure_config=tune.FailureConfig(max_failures=1, fail_fast=False),
            # Checkpoint retention (PBT's shared states): none is deleted by Tune, new or
            # restored experiment alike, as configure_session sets; trials prune their own.
            progress_reporter=reporter, verbose=verbose))


def _shared_states_kept(plan: SearchPlan) -> int:
    """How many shared states each trial keeps: none without PBT."""
    if plan.scheduler != "pbt":
        return 0
    pbt = plan.profile.pbt if plan.profile else None
    interval, _ = pbt_schedule(pbt, epochs=plan.epochs, val_interval=plan.val_interval)
    return pbt_checkpoints_kept(interval, plan.val_interval)


def run_search(name: str, *, samples: int | None = None, seed: int = 42,
               objective: str | None = None, gpus_per_trial: float | None = None,
               cpus_per_trial: float | None = None, max_concurrent: int | None = None,
               address: str | None = None, smoke_test: bool = False, fresh: bool = False,
               opts: Sequence[str] = (), bin_ms: int | None = None,
               profile: str | None = None, paths: Paths | None = None,
               num_cpus: int | None = None, ray_temp_dir: str | None = None,
               verbose: int = 1, scheduler: str | None = None,
               time_budget: float | None = None,
               reuse_actors: bool = True) -> ex.SearchSummary:
    """Run (or continue) the Bayesian search for run name `name` on Ray Tune.

    Reads CONFIG_DIR/<name>.yaml and its search space (TRAIN.TUNE_HP_JSON), builds the
    cached tensors if needed, then runs trials until the experiment holds `samples`.

    Args:
        name: a dataset name or "synthetic" (a rendered config must exist).
        samples: trials the experiment should hold (default 100; 2 with smoke_test).
        seed: seeds the searcher; trial i trains with seed + i.
        objective: "best_masked_loss" (minimised; the default) or "best_val_cobps".
        gpus_per_trial, cpus_per_trial: Ray resources per trial (default 0.5 and 3;
            fractions pack trials onto a GPU). Without GPUs in the cluster trials run on CPUs.
        max_concurrent: trials at once (default: as many as the resources allow).
        address: join this Ray cluster; without it a private local Ray is started.
        smoke_test: a few epochs per trial (SMOKE_OVERRIDES), in a "-smoke" experiment.
        fresh: start a new experiment next to the newest one instead of continuing it.
        opts: extra config overrides ["KEY", "VALUE", ...] (not for searched keys).
        bin_ms: train at this bin width; another width is the run "<name>_<bin_ms>".
        profile: a named settings overlay (configs/profiles/: aesmte3, stndt, autolfads);
            explicit arguments win over it.
        paths: `nlb_ndt.paths.Paths` (default: from the environment).
        num_cpus: CPUs of a local Ray (default: all).
        ray_temp_dir: Ray's temp dir for a local Ray (keep it short: unix sockets).
        verbose: Ray Tune verbosity (0-3).
        scheduler: "fifo" (the default), "asha" or "pbt" (hyperopt.schedulers).
        time_budget: hours the experiment may take over all its sessions (hyperopt.budget).
        reuse_actors: run trial after trial in the same worker processes.

    Returns:
        A SearchSummary of every trial of the experiment.
    """
    paths = paths or get_paths()
    chosen = load_profile(profile) if profile else None
    objective = _setting(chosen, objective, "objective", DEFAULT_OBJECTIVE)
    scheduler = _setting(chosen, scheduler, "scheduler", "fifo")
    plan = plan_search(name, paths=paths, samples=samples, seed=seed, objective=objective,
                       smoke_test=smoke_test, fresh=fresh, opts=opts, bin_ms=bin_ms,
                       profile=chosen, scheduler=scheduler)
    logger.info("%s experiment %s (%d samples%s)", "continuing" if plan.resume else "new",
                plan.exp_dir, plan.samples, f", profile {chosen.name}" if chosen else "")
    # Data first: trials only read the cache, and must not race to build it.
    build_tensors(plan.dataset, phase="val", bin_ms=plan.bin_ms, paths=paths)
    resources = (_setting(chosen, cpus_per_trial, "cpus_per_trial", DEFAULT_CPUS_PER_TRIAL),
                 _setting(chosen, gpus_per_trial, "gpus_per_trial", DEFAULT_GPUS_PER_TRIAL))
    with _ray(address, num_cpus=num_cpus, temp_dir=ray_temp_dir, paths=paths,
              verbose=verbose):
        return _run(plan, address=address, resources=resources, paths=paths,
                    max_concurrent=max_concurrent, verbose=verbose, time_budget=time_budget,
                    reuse_actors=reuse_actors)


def _run(plan: SearchPlan, *, address: str | None, resources: tuple[float, float],
         paths: Paths, max_concurrent: int | None, verbose: int, time_budget: float | None,
         reuse_actors: bool) -> ex.SearchSummary:
    """Inside Ray: check the storage, record the session, fit the Tuner, summarise."""
    if address:
        # Before any trial: every node must see the experiment and the tensor cache.
        check_shared_storage([plan.exp_dir, paths.ndt_cache_dir])
    started = time.time()
    cpus, gpus, max_concurrent = ex.plan_resources(*resources, max_concurrent)
    info_file = plan.exp_dir / EXPERIMENT_INFO_FILE
    deadline = session_deadline(info_file, time_budget, started=started)
    ex.write_record(plan.exp_dir, resume=plan.resume, cfg_text=plan.cfg_text, dims=plan.dims,
                    settings={**plan.record(address=address, cpus=cpus, gpus=gpus,
                                            max_concurrent=max_concurrent),
                              "time_budget_hours": time_budget, "deadline": deadline})
    if plan.resume:
        ex.repair_state(plan.exp_dir)
    tuner = _tuner(plan, seed=plan.seed, cpus=cpus, gpus=gpus, max_concurrent=max_concurrent,
                   verbose=verbose, deadline=deadline)
    configure_session(tuner, callbacks=[BudgetCallback(deadline), PendingWatch(),
                                        ex.StateBackup(plan.exp_dir)],
                      reuse_actors=reuse_actors)
    if past(deadline) and plan.resume:
        logger.warning("the time budget of %g h is spent; run again with a larger "
                       "--time-budget to continue", time_budget)
        results = tuner.get_results()
    else:
        # Ray's newer console output ignores progress reporters; ours shows the objective.
        with env_vars(RAY_AIR_NEW_OUTPUT="0", **tune_settings()):
            results = tuner.fit()
        ex.close_session(info_file, seconds=time.time() - started)
    summary = ex.summarise(results, plan.exp_dir, plan.objective, plan.mode, plan.dims)
    ex.write_trials_csv(summary)
    return summary


def _setting(profile: Profile | None, value, field: str, default):
    """An explicit argument, else the profile's value, else the default."""
    preset = getattr(profile, field) if profile else None
    if value is not None and preset is not None and value != preset:
        logger.warning("%s %s overrides profile %s (%s)", field, value, profile.name, preset)
    return value if value is not None else preset if preset is not None else default


@contextlib.contextmanager
def _ray(address: str | None, *, num_cpus: int | None, temp_dir: str | None, paths: Paths,
         verbose: int) -> Iterator[None]:
    """Ray for one search: joined or started here (and then shut down at the end), unless
    the caller already started it."""
    if ray.is_initialized():
        yield
        return
    # No address: a private local Ray, whatever RAY_ADDRESS says; an address that does
    # not answer fails in seconds (cluster.ClusterError).
    connect(address, num_cpus=num_cpus, temp_dir=temp_dir,
            runtime_env={"env_vars": paths.as_env()}, log_to_driver=verbose > 1)
    try:
        yield
    finally:
        ray.shutdown()
