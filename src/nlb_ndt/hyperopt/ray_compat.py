"""The only places that reach into Ray's private API, pinned to the Ray version we test.

Ray has no public way to (1) change the sample budget of a restored experiment, (2) give
a local Ray instance a short temporary folder (unix socket paths are limited to 107
bytes, and Ray's default under a deep run folder exceeds that), (3) tell which cluster
`address="auto"` would join, (4) keep a local Ray on the loopback interface (`ray.init`
turns a node IP of 127.0.0.1 into the machine's outward IP, and every server then
listens on all interfaces), (5) make a running process re-read the RAY_AUTH_* variables
(Ray reads them once and caches them), (6) set a restored Tuner's callbacks and its
trials' checkpoint retention (both are pickled into the experiment), or (7) end a Tune
run from a callback, saving it (Tune's own signal hook does). All are
needed, so all live here, behind one function each, and tests/hyperopt/test_ray_compat.py
checks that the installed Ray still has what they touch. Upgrading Ray means re-checking
this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import ray
from ray import tune
from ray.tune.search import SearchGenerator

#: The Ray release these shims were written against (requirements.txt pins it).
TESTED_RAY_VERSION = "2.60.0"


@contextlib.contextmanager
def env_vars(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of a call
    (Ray reads many of its settings from the environment of the process starting it)."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def set_sample_budget(generator: SearchGenerator, total: int) -> None:
    """Make a SearchGenerator (restored or new) suggest up to `total` trials in all.

    SearchGenerator keeps its budget in `_total_samples` and latches `_finished` once the
    counter reaches it; a restored experiment gets the budget it started with.
    """
    generator._total_samples = int(total)
    generator._finished = False  # re-evaluated from the counter on the next suggestion


#: The only address a private local Ray listens on.
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """While inside, Ray resolves the node IP "127.0.0.1" to itself, not the outward IP.

    `ray.init(_node_ip_address=...)` passes a loopback address through
    `services.resolve_ip_for_localhost`, which keeps it only where
    `ray_constants.ENABLE_RAY_CLUSTER` is off (Ray's own setting on macOS and Windows).
    Ray's servers (GCS, raylet, workers, the driver) listen on 127.0.0.1 alone exactly
    when their node IP is 127.0.0.1; once the node is up every process reads its IP from
    the node, so the switch is needed during `ray.init` only.
    """
    from ray._private import ray_constants  # private API

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def init_local(*, num_cpus: int | None, temp_dir: str | None, runtime_env: dict,
               log_to_driver: bool, token_file: str | Path) -> None:
    """Start a private local Ray instance (never an existing cluster, whatever RAY_ADDRESS
    says): its processes listen on the loopback interface only, there is no dashboard,
    and every call needs the token in `token_file`.

    Ray's processes take the RAY_AUTH_* settings from the environment they start with
    (the GCS and raylet from this process, each worker from the raylet), and this process
    from its reloaded cache; the environment is set only while Ray starts, so the
    caller's own settings are back afterwards (a later cluster join uses those).
    """
    with env_vars(RAY_ADDRESS=None, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=None,
                  RAY_AUTH_TOKEN_PATH=str(token_file)), _loopback_node_ip():
        reload_auth_settings()
        ray.init(address="local", num_cpus=num_cpus, _temp_dir=temp_dir,
                 _node_ip_address=LOOPBACK, include_dashboard=False,
                 runtime_env=runtime_env, log_to_driver=log_to_driver)


def stop_tune_run() -> bool:
    """Ask the running Tune loop to stop and save the experiment, as Ctrl-C does.

    A callback has no public way to end the run; Tune handles SIGUSR1 like SIGINT when it
    runs in the main thread. False: nothing is installed for it (another thread).
    """
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    os.kill(os.getpid(), signal.SIGUSR1)
    return True


def reload_auth_settings() -> None:
    """Make this process's Ray read RAY_AUTH_MODE / RAY_AUTH_TOKEN(_PATH) again.

    Ray's C++ core caches its config (the authentication mode among it) and the token the
    first time it needs them; a later change of the environment is not seen until both
    are reloaded. The config goes first: a token cache dropped while the config still says
    "token" would be reloaded from a file that may be gone (Ray's own test helpers keep
    this order for that reason).
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # private API

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


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


def configure_session(tuner, *, callbacks: list, reuse_actors: bool) -> None:
    """This session's callbacks and actor reuse on a Tuner, new or restored.

    Tune pickles a Tuner's run and tune configs into the experiment when the Tuner is
    made, and `Tuner.restore` takes no new ones; callbacks that hold this session's
    settings (its time budget) and actor reuse are therefore set on the Tuner's internals
    after it is made, so they are neither pickled nor lost on a restore.

    Tune deletes none of a trial's reported checkpoints: trials prune their own (PBT's
    shared states, `trainable.prune_shared_states`), and Tune's pruning could delete a
    state a PBT clone has still to read. Experiments started before that rule pickled a
    limit (5) into the run config and into every trial; both are lifted here.
    """
    internal = tuner._local_tuner
    run_config = internal.get_run_config()
    run_config.checkpoint_config.num_to_keep = None  # the trials made from now on
    run_config.callbacks = [*(run_config.callbacks or []), *callbacks, KeepEveryCheckpoint()]
    internal._tune_config.reuse_actors = bool(reuse_actors)


def keep_every_checkpoint(trial) -> None:
    """Make Tune keep every checkpoint `trial` reports from now on (a restored trial
    carries the retention limit it was made with)."""
    manager = trial.run_metadata.checkpoint_manager
    if manager.checkpoint_config.num_to_keep is not None:
        manager._checkpoint_config = dataclasses.replace(manager.checkpoint_config,
                                                         num_to_keep=None)


class KeepEveryCheckpoint(tune.Callback):
    """Lifts the retention limit of every trial as it starts or resumes, before it can
    report a checkpoint (Tune prunes only when a checkpoint is registered)."""

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        keep_every_checkpoint(trial)
