"""Ray connection, shared-storage check, a watch on trials that never start, and node
records: the search's cluster side.

A search either starts its own private Ray (no address) or joins a cluster (`--address`).
Both need guarding against Ray's defaults:

- without an address, `ray.init()` joins whatever `RAY_ADDRESS` or the last `ray start`
  (/tmp/ray/ray_current_cluster) points at, so a stale variable or file would send a
  local search to a dead or foreign cluster. `connect` always passes address="local"
  (a new instance, whatever the environment says) and hides RAY_ADDRESS from that call;
- Ray's servers listen on every interface. A private Ray listens on 127.0.0.1 only and
  requires a token made for its run (`write_run_token`). With an address the user's own
  RAY_AUTH_* settings are used;
- with an address, `ray.init` retries an unreachable GCS for minutes before failing with
  a traceback. `connect` first opens a TCP connection to HOST:PORT with a timeout, so an
  unreachable cluster fails in seconds with one line naming the address and the check;
- every trial writes into the experiment folder and reads the tensor cache, so every node
  must see those folders at the same path. `check_shared_storage` proves every alive
  node sees them before any trial starts;
- trials that wait to start while none runs wait for something that is not coming;
  `PendingWatch` ends such a run, saved, with one line on what they ask for;
- a trial records the node and device it ran on (`trial_run_info`, in run_info.json and
  trials.csv), so a result can be traced to the machine, and a trial moved after a lost
  node shows each attempt.

Ray's private API is reached only through `ray_compat`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import tune

from nlb_ndt.config.layout import read_run_info
from nlb_ndt.hyperopt.ray_compat import (  # env_vars: search.py takes it from here
    env_vars,
    init_local,
    last_started_cluster,
    reload_auth_settings,
    stop_tune_run,
)

logger = logging.getLogger(__name__)

#: Seconds a TCP connection to the cluster's GCS port may take before it counts as down.
PROBE_TIMEOUT_S = float(os.environ.get("NLB_RAY_PROBE_TIMEOUT_S", "10"))
#: Seconds `ray.init` may spend connecting once the port answers (Ray's own default is 60).
CONNECT_TIMEOUT_S = 30
#: Seconds every node gets to answer the storage check (a first task starts a worker).
STORAGE_CHECK_TIMEOUT_S = 120
TOKEN_PREFIX = ".nlb_ndt_storage_check_"
STORAGE_FIX = "put NLB_HOME on storage every node mounts, for example NFS"
#: A private Ray's token lives in a folder named so (plus the owning pid) in its temp root.
AUTH_DIR_PREFIX = "nlb_ray_auth_"
AUTH_TOKEN_FILE = "auth_token"
#: Seconds trials may all wait to start, none running, before the run stops (0: never).
PENDING_TIMEOUT_S = float(os.environ.get("NLB_PENDING_TIMEOUT_S", "300"))


class ClusterError(RuntimeError):
    """The Ray cluster cannot be used as asked (unreachable, or storage not shared)."""


# ------------------------------------------------------------------------- connecting
def resolve_address(address: str) -> str:
    """HOST:PORT for `address` ("auto" means RAY_ADDRESS or the last `ray start`)."""
    if address == "auto":
        found = last_started_cluster()
        if not found:
            raise ClusterError("--address auto: no Ray cluster found (no RAY_ADDRESS and no "
                               "`ray start` on this machine); start one with `ray start "
                               "--head`, or pass --address HOST:PORT")
        address = found
    address = address.removeprefix("ray://").removeprefix("gcs://")
    return address


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless a TCP connection to HOST:PORT opens within `timeout_s`."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not HOST:PORT (or 'auto')")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (
            exc.strerror or str(exc)).lower()
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({reason} within {timeout_s:g} s); "
            f"check it with `ray status --address {address}`, or leave out --address for a "
            f"local search") from None


def tune_settings() -> dict[str, str]:
    """Environment settings for `Tuner.fit`: TUNE_GLOBAL_CHECKPOINT_S=0 saves the
    experiment state (trials, searcher) at the end of every step of Tune's loop, so the
    step that starts or ends a trial is saved before the next one (Tune's default, 10 s
    or more apart, lets a driver killed in between lose a started trial). A value the
    user set is kept."""
    return {"TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "0")}


def _remove_stale_tokens(root: Path) -> None:
    """Remove the token folders of private Rays that are gone: their process has ended,
    or it is this one (which runs no Ray when it starts another)."""
    for folder in root.glob(f"{AUTH_DIR_PREFIX}*_*"):
        pid = folder.name[len(AUTH_DIR_PREFIX):].split("_")[0]
        if not pid.isdigit():
            continue
        try:
            if int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's, alive
        shutil.rmtree(folder, ignore_errors=True)


def write_run_token(temp_dir: str | None) -> Path:
    """A new random token for one private Ray, in a new folder only this user can open
    (mode 0700, the file 0600), under `temp_dir` (else Ray's temp root)."""
    root = Path(temp_dir or os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tokens(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{AUTH_DIR_PREFIX}{os.getpid()}_", dir=root))
    atexit.register(shutil.rmtree, folder, True)  # Ray's own exit hook runs first
    path = folder / AUTH_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # 256 bits, as Ray's own generator
    return path


def connect(address: str | None = None, *, num_cpus: int | None = None,
            temp_dir: str | None = None, runtime_env: Mapping[str, Any] | None = None,
            log_to_driver: bool = False) -> None:
    """Start a private local Ray (no address) or join the cluster at `address`.

    Args:
        address: None for a local Ray of this process's own (loopback only, token
            authentication), whatever RAY_ADDRESS or a leftover
            /tmp/ray/ray_current_cluster says; "auto" or HOST:PORT to join, with the
            authentication settings of the environment.
        num_cpus, temp_dir: of the local Ray (ignored when joining: the nodes own them).
        runtime_env: Ray runtime env for every worker (the path variables).
        log_to_driver: show the workers' output in this process.

    Raises:
        ClusterError: the cluster does not answer (within about PROBE_TIMEOUT_S +
            CONNECT_TIMEOUT_S seconds) or refuses this process's token.
    """
    runtime_env = dict(runtime_env or {})
    if not address:
        token = write_run_token(temp_dir)
        init_local(num_cpus=num_cpus, temp_dir=temp_dir, runtime_env=runtime_env,
                   log_to_driver=log_to_driver, token_file=token)
        logger.info("private Ray on 127.0.0.1 only, with token authentication (%s)", token)
        return
    target = resolve_address(address)
    probe(target)
    # The user's RAY_AUTH_* settings as they are now (a private Ray earlier in this process
    # left Ray's cache on its token). "auto" reaches Ray as "auto", pinned to the address
    # probed, so Ray's rule for it holds (~/.ray/auth_token turns authentication on).
    reload_auth_settings()
    auto = address == "auto"  # below: bound the GCS handshake too (Ray waits 60 s or more)
    with env_vars(RAY_ADDRESS=target if auto else None,
                  RAY_py_gcs_connect_timeout_s=str(CONNECT_TIMEOUT_S),
                  RAY_gcs_rpc_server_connect_timeout_s=str(CONNECT_TIMEOUT_S)):
        try:
            ray.init(address="auto" if auto else target, runtime_env=runtime_env,
                     log_to_driver=log_to_driver)
        except (ConnectionError, TimeoutError, RuntimeError,
                ray.exceptions.AuthenticationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cannot join the Ray cluster at {target} ({first}); check "
                               f"it with `ray status --address {target}`, and that this "
                               f"process has its token if it has one (RAY_AUTH_MODE=token, "
                               f"~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)") from None
    logger.info("joined the Ray cluster at %s: %d node(s)", target, len(alive_nodes()))


def alive_nodes() -> list[dict]:
    """`ray.nodes()` entries of the nodes that are alive."""
    return [n for n in ray.nodes() if n.get("Alive")]


class PendingWatch(tune.Callback):
    """Ends a Tune run in which trials have waited to start for `timeout_s` while none
    ran, as Ctrl-C does (saved: the same command continues it), with one line on what the
    trials ask for and what the cluster has free. Each session attaches its own."""

    def __init__(self, timeout_s: float = PENDING_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.fired = False
        self._since: float | None = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        waiting = [t for t in trials if t.status == "PENDING"]
        if self.fired or not self.timeout_s or not waiting or \
                any(t.status == "RUNNING" for t in trials):
            self._since = None
            return
        self._since = self._since or time.monotonic()
        if time.monotonic() - self._since < self.timeout_s:
            return
        self.fired = True
        asks = waiting[0].placement_group_factory.required_resources
        logger.error("no trial started within %g s: %d trial(s) wait for %s each, and the "
                     "cluster has %s free of %s; stopping the search (it is saved: run the "
                     "same command again, after `ray status` if on a cluster)",
                     self.timeout_s, len(waiting), _plain(asks),
                     _plain(ray.available_resources()), _plain(ray.cluster_resources()))
        stop_tune_run()


def _plain(resources: Mapping[str, float]) -> str:
    """CPU, GPU and custom resources (not Ray's per-node and memory entries)."""
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())
                     if not k.startswith("node:") and "memory" not in k) or "nothing"


# --------------------------------------------------------------------- shared storage
def _read_tokens(tokens: dict[str, str]) -> dict:
    """On a node: which token files it sees with the expected content."""
    seen = {}
    for path, content in tokens.items():
        try:
            seen[path] = Path(path).read_text() == content
        except OSError:
            seen[path] = False
    return {"seen": seen, **node_info()}


def _node_name(node: Mapping[str, Any]) -> str:
    return (f"{node.get('host') or node.get('NodeManagerHostname')} "
            f"(ip {node.get('ip') or node.get('NodeManagerAddress')}, node id "
            f"{node.get('node_id') or node.get('NodeID')})")


def check_shared_storage(paths_to_check: Sequence[str | Path], *,
                         timeout_s: float = STORAGE_CHECK_TIMEOUT_S) -> None:
    """Make sure every alive node sees `paths_to_check` (folders) as the driver does.

    The driver writes a token file with random content into each folder, then runs a
    task pinned to every alive node that reads them back (and removes them). A node that
    cannot (its own disk there, a missing mount) stops the search before any trial,
    naming the node and the folder. A single-node cluster has nothing to check.

    Raises:
        ClusterError: a node does not see a folder, or does not answer in `timeout_s`.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    tokens: dict[str, str] = {}
    try:
        for folder in map(Path, paths_to_check):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{TOKEN_PREFIX}{secrets.token_hex(8)}"
            content = secrets.token_hex(16)
            path.write_text(content)
            tokens[str(path)] = content
        task = ray.remote(num_cpus=0, max_retries=0)(_read_tokens)
        refs = {node["NodeID"]: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(tokens) for node in nodes}
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            try:
                answer = ray.get(refs[node["NodeID"]],
                                 timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                raise ClusterError(
                    f"node {_node_name(node)} did not answer the shared-storage check "
                    f"within {timeout_s:g} s; check it with `ray status`") from None
            except ray.exceptions.RayError as exc:
                raise ClusterError(f"the shared-storage check failed on node "
                                   f"{_node_name(node)}: {type(exc).__name__}") from None
            missing = [p for p, ok in answer["seen"].items() if not ok]
            if missing:
                raise ClusterError(
                    f"node {_node_name(answer)} cannot see {Path(missing[0]).parent} "
                    f"(a file the driver wrote there is missing on that node); "
                    f"{STORAGE_FIX}")
        logger.info("shared storage: %d nodes see %s", len(nodes),
                    ", ".join(str(Path(p).parent) for p in tokens))
    finally:
        for path in tokens:
            with contextlib.suppress(OSError):
                os.unlink(path)


# ------------------------------------------------------------------------ node records
def node_info() -> dict:
    """Host, IP and Ray node id of the calling process, and its device: "cpu", or
    "gpu:<ids>" with the GPU ids Ray assigned (ray.get_gpu_ids())."""
    info = {"host": socket.gethostname(), "node_id": None, "ip": None, "gpu_ids": []}
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        info["node_id"] = ctx.get_node_id()
        with contextlib.suppress(Exception):
            info["ip"] = ray.util.get_node_ip_address()
        with contextlib.suppress(Exception):
            info["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    info["device"] = f"gpu:{','.join(info['gpu_ids'])}" if info["gpu_ids"] else "cpu"
    return info


def trial_run_info(run_dir: str | Path) -> dict:
    """The keys a trial adds to its run_info.json: "node" (this attempt's node and
    device) and "attempts" (every attempt's node, oldest first: a trial resumed on
    another node after its node was lost shows both)."""
    node = node_info()
    node["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    attempts = list(read_run_info(run_dir).get("attempts", []))
    return {"node": node, "attempts": attempts + [node]}


def trial_columns(run_dir: str | Path) -> dict:
    """trials.csv columns from a trial's run_info.json: host, node_id, device of the last
    attempt and the number of attempts (empty when the trial never started)."""
    info = read_run_info(run_dir)
    node = info.get("node") or {}
    return {"host": node.get("host"), "node_id": node.get("node_id"),
            "device": node.get("device"), "attempts": len(info.get("attempts", [])) or None}
