"""Shared fixtures: one synthetic NLB dataset per test session, and an isolated NLB_HOME."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import PATH_VARS

from nlb_ndt.paths import get_paths

# Tests never touch a user's real NLB_HOME, and Ray never asks for a login.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def synthetic_home(tmp_path_factory) -> Path:
    """An NLB_HOME whose raw/ holds the synthetic mc_maze_small-shaped dataset (seed 0)."""
    from nlb_ndt.synthetic import generate

    home = tmp_path_factory.mktemp("nlb_home")
    generate(home / "raw", like="mc_maze_small", seed=0)
    return home


@pytest.fixture
def nlb_env(synthetic_home, monkeypatch):
    """Point every path variable at `synthetic_home`; returns the resolved Paths."""
    for var in PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(synthetic_home))
    return get_paths()


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
