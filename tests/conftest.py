"""Shared fixtures: one synthetic NLB dataset per test session, an isolated NLB_HOME, and
one fake search over it (read by the ranking and the submission stage)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest
from helpers import BIN_MS, DATASET, GROUP, PATH_VARS, fill_search

from nlb_ndt.paths import get_paths

# Tests never touch a user's real NLB_HOME, nor depend on the user's Ray token settings:
# a private Ray makes its own token, and the cluster tests set theirs.
for _var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(_var, None)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Under pytest-xdist (`make test` runs two workers on two cores), each worker and the
# processes it starts use one thread: two workers of two threads each would spin
# against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def pytest_collection_modifyitems(items):
    """Run the modules with the most slow tests first, so that with `--dist loadfile` the
    long Ray searches start at once and the quick modules fill the gaps, instead of one
    worker finishing a search alone at the end. The order is stable, so every worker
    agrees."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory) -> Path:
    """An NLB_HOME whose raw/ holds the synthetic mc_maze_small-shaped dataset (seed 0)."""
    from nlb_ndt.data.synthetic import generate

    home = tmp_path_factory.mktemp("nlb_home")
    generate(home / "raw", like=DATASET, seed=0)
    return home


@pytest.fixture
def nlb_env(synthetic_home, monkeypatch):
    """Point every path variable at `synthetic_home`; returns the resolved Paths."""
    for var in PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(synthetic_home))
    return get_paths()


@pytest.fixture(scope="session")
def search_home(synthetic_home, tmp_path_factory) -> dict:
    """A fresh NLB_HOME (submissions, configs, searches) reading the shared synthetic data,
    holding a fake search of run "synthetic": two trials x three snapshots of untrained
    NDTs of different, known quality (helpers.fill_search). Built once per session; use
    the `search` fixture, which also points the path variables at it."""
    from nlb_ndt.data import preprocess

    home = tmp_path_factory.mktemp("search_home")
    env = {"NLB_HOME": str(home), "NLB_DATA_RAW": str(synthetic_home / "raw"),
           "NDT_CACHE_DIR": str(synthetic_home / "neural-data-transformer")}
    with pytest.MonkeyPatch.context() as mp:
        _point_paths(mp, env)
        paths = get_paths()
        tensors = preprocess.load_tensors(DATASET, phase="val", bin_ms=BIN_MS)
        snapshots = fill_search(paths, tensors)
        target = preprocess.load_val_target(DATASET, bin_ms=BIN_MS)[GROUP]
    return {"env": env, "paths": paths, "snapshots": snapshots, "target": target,
            "tensors": tensors}


@pytest.fixture
def search(search_home, monkeypatch) -> dict:
    """`search_home` with every path variable pointing at it for this test."""
    _point_paths(monkeypatch, search_home["env"])
    return search_home


@pytest.fixture(scope="session")
def experiments_home(search_home, tmp_path_factory) -> dict:
    """Run "synthetic" with two experiments: `search_home`'s search (`<NAME>-s0`, no
    experiment_info.json, so all three snapshot kinds) copied into a fresh NLB_HOME, and
    helpers.AESMTE3_EXPERIMENT (two more trials, recorded profile aesmte3 and snapshot
    kinds lve, lfve). Built once per session; use the `experiments_search` fixture."""
    import shutil

    from helpers import AESMTE3_EXPERIMENT, AESMTE3_INFO

    src = search_home["paths"]
    home = tmp_path_factory.mktemp("experiments_home")
    env = {**search_home["env"], "NLB_HOME": str(home)}
    with pytest.MonkeyPatch.context() as mp:
        _point_paths(mp, env)
        paths = get_paths()
        shutil.copytree(src.ray_tune_home, paths.ray_tune_home)
        shutil.copytree(src.config_dir, paths.config_dir)
        added = fill_search(paths, search_home["tensors"], experiment=AESMTE3_EXPERIMENT,
                            first_trial=2, info=AESMTE3_INFO)
    return {**search_home, "env": env, "paths": paths,
            "snapshots": search_home["snapshots"] + added}


@pytest.fixture
def experiments_search(experiments_home, monkeypatch) -> dict:
    """`experiments_home` with every path variable pointing at it for this test."""
    _point_paths(monkeypatch, experiments_home["env"])
    return experiments_home


def _point_paths(mp: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for var in PATH_VARS:
        mp.delenv(var, raising=False)
    for var, value in env.items():
        mp.setenv(var, value)


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread while scoring: nlb_tools' vel R2 fits many small ridge regressions,
    and on a 2-core machine two BLAS threads spin against each other (~10x slower).
    Results are the same either way."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(autouse=True)
def _restore_logging():
    """Scripts' main() reconfigures the root logger onto captured streams; put it back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
