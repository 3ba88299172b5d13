"""The only places that reach into Ray's private API, pinned to the Ray version we test.

Ray has no public way to (1) change the sample budget of a restored experiment, (2) give
a local Ray instance a short temporary folder (unix socket paths are limited to 107
bytes, and Ray's default under a deep run folder exceeds that), or (3) tell which cluster
`address="auto"` would join. All are needed, so all live here, behind one function
each, and tests/test_hyperopt.py checks that the installed Ray still has what they touch.
Upgrading Ray means re-checking this file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import ray
from ray.tune.search import SearchGenerator

#: The Ray release these shims were written against (requirements.txt pins it).
TESTED_RAY_VERSION = "2.60.0"


def set_sample_budget(generator: SearchGenerator, total: int) -> None:
    """Make a SearchGenerator (restored or new) suggest up to `total` trials in all.

    SearchGenerator keeps its budget in `_total_samples` and latches `_finished` once the
    counter reaches it; a restored experiment gets the budget it started with.
    """
    generator._total_samples = int(total)
    generator._finished = False  # re-evaluated from the counter on the next suggestion


def init_local(*, num_cpus: int | None, temp_dir: str | None, runtime_env: dict,
               log_to_driver: bool) -> None:
    """Start a private local Ray instance (never an existing cluster)."""
    ray.init(address="local", num_cpus=num_cpus, _temp_dir=temp_dir, include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=log_to_driver)


def last_started_cluster() -> str | None:
    """The address `ray.init(address="auto")` would join: RAY_ADDRESS, else the last
    `ray start` on this machine. Ray has no public call for this; its private helper is
    used when present (Ray 2.x), else the same two sources are read directly."""
    try:
        from ray._private.services import canonicalize_bootstrap_address  # private API
    except ImportError:
        canonicalize_bootstrap_address = None
    if canonicalize_bootstrap_address is not None:
        try:
            return canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError):
            return None
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env
    with contextlib.suppress(OSError):
        return Path("/tmp/ray/ray_current_cluster").read_text().strip() or None
    return None
