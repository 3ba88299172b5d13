"""Shared fixtures of the search tests: one private Ray per test module (started as
run_search starts it, so each search skips Ray's start-up), a synthetic NLB_HOME with
rendered configs and cached tensors, this test's own RAY_TUNE_HOME, and a search runner."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import run_smoke_search

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.render import generate_configs


@pytest.fixture(scope="module")
def module_ray(synthetic_home, tmp_path_factory):
    """A private local Ray (2 CPUs, loopback, its own token) for one test module, under a
    short /tmp symlink (unix socket paths are limited to ~107 characters); workers get
    the synthetic NLB_HOME's paths (a trial reads only the tensor cache from them). Shut
    down after the module. Yields the Ray temp folder."""
    import ray

    from nlb_ndt.hyperopt.cluster import connect
    from nlb_ndt.paths import get_paths

    folder = tmp_path_factory.mktemp("ray")
    link = Path("/tmp") / f"ray_{uuid.uuid4().hex[:8]}"
    link.symlink_to(folder)
    env = get_paths({"NLB_HOME": str(synthetic_home)}).as_env()
    try:
        connect(None, num_cpus=2, temp_dir=str(link), runtime_env={"env_vars": env})
        yield str(link)
    finally:
        ray.shutdown()
        link.unlink()


@pytest.fixture
def ray_env(nlb_env, module_ray, tmp_path, monkeypatch):
    """Rendered configs and cached tensors in the synthetic NLB_HOME, this test's own
    RAY_TUNE_HOME, and the module's Ray: (paths, Ray temp folder)."""
    from nlb_ndt.data.preprocess import build_tensors
    from nlb_ndt.paths import get_paths

    monkeypatch.setenv("RAY_TUNE_HOME", str(tmp_path / "ray_results"))
    paths = get_paths()
    generate_configs(["synthetic"], paths.config_dir, overwrite=True, paths=paths)
    cfg = load_config(paths.config_dir / "synthetic.yaml")
    build_tensors(cfg.DATA.DATASET, phase="val", bin_ms=cfg.DATA.BIN_MS, paths=paths)
    return paths, module_ray


@pytest.fixture
def search_env(ray_env):
    """(run, paths): `run(**kwargs)` runs the synthetic smoke search in `ray_env`."""
    paths, temp_dir = ray_env
    return (lambda **kwargs: run_smoke_search(paths, temp_dir, **kwargs)), paths
