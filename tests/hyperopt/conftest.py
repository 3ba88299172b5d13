"""Shared fixtures of the search tests: a synthetic NLB_HOME with rendered configs and
cached tensors, this test's own RAY_TUNE_HOME and Ray temp folder, and a search runner."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import run_smoke_search

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.render import generate_configs


@pytest.fixture
def ray_env(nlb_env, tmp_path, monkeypatch):
    """Rendered configs and cached tensors in the synthetic NLB_HOME, this test's own
    RAY_TUNE_HOME, a short symlink to a Ray temp dir inside this test's folder (unix
    socket paths are limited to ~107 characters), and Ray shut down whatever happens."""
    pytest.importorskip("nlb_ndt.data.preprocess")
    pytest.importorskip("nlb_ndt.training.trainer")
    import ray

    from nlb_ndt.data.preprocess import build_tensors
    from nlb_ndt.paths import get_paths

    monkeypatch.setenv("RAY_TUNE_HOME", str(tmp_path / "ray_results"))
    nlb_env = get_paths()
    generate_configs(["synthetic"], nlb_env.config_dir, overwrite=True, paths=nlb_env)
    cfg = load_config(nlb_env.config_dir / "synthetic.yaml")
    build_tensors(cfg.DATA.DATASET, phase="val", bin_ms=cfg.DATA.BIN_MS, paths=nlb_env)
    (tmp_path / "ray").mkdir()
    link = Path("/tmp") / f"ray_{uuid.uuid4().hex[:8]}"
    link.symlink_to(tmp_path / "ray")
    try:
        yield nlb_env, str(link)
    finally:
        ray.shutdown()
        link.unlink()


@pytest.fixture
def search_env(ray_env):
    """(run, paths): `run(**kwargs)` runs the synthetic smoke search in `ray_env`."""
    paths, temp_dir = ray_env
    return (lambda **kwargs: run_smoke_search(paths, temp_dir, **kwargs)), paths
