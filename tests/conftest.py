"""Shared fixtures: one synthetic NLB dataset per test session, and an isolated NLB_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nlb_ndt.paths import get_paths

_PATH_VARS = ("NLB_HOME", "NLB_DATA_RAW", "NLB_CACHE_DIR", "NDT_CACHE_DIR", "RAY_TUNE_HOME",
              "CHECKPOINT_DIR", "CONFIG_DIR", "SUBMISSION_VALIDATION_ROOT")

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
    for var in _PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(synthetic_home))
    return get_paths()
