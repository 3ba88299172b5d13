"""The shims over Ray's private API, pinned to the Ray release they were written for."""

from __future__ import annotations

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.search_space import parse_search_space
from nlb_ndt.hyperopt.searcher import SkoptSearcher

SPACE = {"TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4}}


def _searcher() -> SkoptSearcher:
    dims = parse_search_space(SPACE, load_config(freeze=False))
    return SkoptSearcher(dims, metric="best_masked_loss", mode="min", seed=0)


def test_ray_private_api_shims_match_the_installed_ray():
    """Verify that the Ray release is the one ray_compat was written for, and that what
    its shims reach into still exists: SearchGenerator's budget fields, ray.init's
    _temp_dir, and the helper that resolves address="auto"."""
    import inspect

    import ray
    from ray._private import services
    from ray.tune.search import SearchGenerator

    from nlb_ndt.hyperopt import ray_compat

    assert ray.__version__ == ray_compat.TESTED_RAY_VERSION
    generator = SearchGenerator(_searcher())
    assert hasattr(generator, "_total_samples") and hasattr(generator, "_finished")
    ray_compat.set_sample_budget(generator, 7)
    assert generator._total_samples == 7 and generator._finished is False
    assert 'kwargs.pop("_temp_dir"' in inspect.getsource(ray.init)
    assert callable(services.canonicalize_bootstrap_address)
