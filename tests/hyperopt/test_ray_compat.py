"""The shims over Ray's private API, pinned to the Ray release they were written for, and
what two of them are for: a private Ray that listens on the loopback interface only and
refuses clients without the token made for its run."""

from __future__ import annotations

import ipaddress
import os
import stat
import uuid
from pathlib import Path

import pytest

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.search_space import parse_search_space
from nlb_ndt.hyperopt.searcher import SkoptSearcher

SPACE = {"TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4}}
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
#: A cheap read on each server: the GCS's cluster id, the raylet's system config.
GCS_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
RAYLET_METHOD = "/ray.rpc.NodeManagerService/GetSystemConfig"


def _searcher() -> SkoptSearcher:
    dims = parse_search_space(SPACE, load_config(freeze=False))
    return SkoptSearcher(dims, metric="best_masked_loss", mode="min", seed=0)


def test_ray_private_api_shims_match_the_installed_ray():
    """Verify that the Ray release is the one ray_compat was written for, and that what
    its shims reach into still exists and does what they rely on: SearchGenerator's
    budget fields, ray.init's _temp_dir, the helper that resolves address="auto", the
    switch that keeps a node IP of 127.0.0.1 as it is, the reload of the authentication
    settings, the Tuner internals that take a session's callbacks, and Tune's SIGUSR1
    hook that stops a run and saves it."""
    import inspect

    import ray
    from ray._private import ray_constants, services
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.tune.search import SearchGenerator

    from nlb_ndt.hyperopt import ray_compat

    assert ray.__version__ == ray_compat.TESTED_RAY_VERSION
    generator = SearchGenerator(_searcher())
    assert hasattr(generator, "_total_samples") and hasattr(generator, "_finished")
    ray_compat.set_sample_budget(generator, 7)
    assert generator._total_samples == 7 and generator._finished is False
    init_source = inspect.getsource(ray.init)
    assert 'kwargs.pop("_temp_dir"' in init_source
    assert callable(services.canonicalize_bootstrap_address)
    # ray.init resolves _node_ip_address through this; only the switch keeps loopback.
    assert "services.resolve_ip_for_localhost(_node_ip_address)" in init_source
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    before = ray_constants.ENABLE_RAY_CLUSTER
    if not ray.is_initialized():
        with ray_compat._loopback_node_ip():
            assert services.resolve_ip_for_localhost("127.0.0.1") == ray_compat.LOOPBACK
        assert ray_constants.ENABLE_RAY_CLUSTER == before
    assert callable(Config.initialize) and callable(AuthenticationTokenLoader.instance)
    assert callable(AuthenticationTokenLoader.instance().reset_cache)
    from ray.tune import tune as tune_module
    from ray.tune.impl.tuner_internal import TunerInternal

    assert "signal.SIGUSR1" in inspect.getsource(tune_module._setup_signal_catching)

    assert callable(TunerInternal.get_run_config)
    assert "self._tune_config = " in inspect.getsource(TunerInternal.__init__)
    assert "self._local_tuner" in inspect.getsource(ray.tune.Tuner.__init__)


def test_configure_session_makes_tune_keep_every_checkpoint_of_old_and_new_trials(tmp_path):
    """Verify that a Tuner whose run config (as a restored experiment from before trials
    pruned their own states would) limits checkpoints to 2 keeps every checkpoint once
    configured: new trials get no limit, and a trial made with the limit loses it when it
    starts, so 4 registered checkpoints all stay on disk (without the callback Tune deletes
    the oldest 2, which the first half of the test checks)."""
    from ray import tune
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.experiment import Trial

    from nlb_ndt.hyperopt.ray_compat import configure_session

    def register_four(trial: Trial, folder: Path) -> list[str]:
        folder.mkdir()
        for i in range(4):
            (folder / f"state_{i}").mkdir()
            trial.run_metadata.checkpoint_manager.register_checkpoint(_TrainingResult(
                checkpoint=Checkpoint(str(folder / f"state_{i}")), metrics={"epoch": i}))
        return sorted(p.name for p in folder.iterdir())

    limited = tune.CheckpointConfig(num_to_keep=2)
    plain = Trial("__fake", stub=True, checkpoint_config=limited)
    assert register_four(plain, tmp_path / "plain") == ["state_2", "state_3"]

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(
        storage_path=str(tmp_path / "runs"), checkpoint_config=limited))
    configure_session(tuner, callbacks=[], reuse_actors=False)
    run_config = tuner._local_tuner.get_run_config()
    assert run_config.checkpoint_config.num_to_keep is None
    restored = Trial("__fake", stub=True, checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    for callback in run_config.callbacks:
        callback.on_trial_start(iteration=0, trials=[restored], trial=restored)
    assert register_four(restored, tmp_path / "restored") == [f"state_{i}" for i in range(4)]


# ------------------------------------------------------------- the private Ray itself
def _ppids() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def _tree(root: int) -> set[int]:
    """`root` and all its descendants (a private Ray: GCS, raylet, agents, workers)."""
    children, found, todo = _ppids(), set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(process name, listening address:port) of every TCP socket `pids` listen on,
    read from /proc/<pid>/fd and /proc/net/tcp{,6}."""
    owner: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                owner[link[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            pid = owner[fields[9]]
            name = Path(f"/proc/{pid}/comm").read_text().strip() if pid != os.getpid() \
                else "driver"
            found.append((name, f"{_address(host)}:{int(port, 16)}"))
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _call(address: str, method: str, token: str | None):
    """The status of one raw gRPC call (an empty request) with `token` as the bearer."""
    import grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method)(b"", metadata=metadata, timeout=20)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def short_temp(tmp_path):
    """A Ray temp dir in this test's folder behind a short /tmp symlink (socket paths are
    limited to ~107 characters); Ray shut down whatever happens."""
    import ray

    (tmp_path / "ray").mkdir()
    link = Path("/tmp") / f"rp_{uuid.uuid4().hex[:8]}"
    link.symlink_to(tmp_path / "ray")
    try:
        yield str(link)
    finally:
        ray.shutdown()
        link.unlink()


@pytest.mark.slow
def test_private_ray_listens_on_loopback_only_and_wants_its_token(short_temp, monkeypatch):
    """Verify the Ray a search starts without --address (cluster.connect, as run_search
    calls it), with a trial-like actor running: no process of it (driver, GCS, raylet,
    agents, workers) listens on anything but loopback; it made a token for this run
    (0600, in a 0700 folder of its temp dir) that its processes were started with; the
    GCS and the raylet refuse a call without the token or with a wrong one, and answer
    one with it; and the caller's RAY_AUTH_* settings are back as they were."""
    import grpc
    import ray

    from nlb_ndt.hyperopt import cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # what demo.py used to set: overridden
    cluster.connect(None, num_cpus=1, temp_dir=short_temp,
                    runtime_env={"env_vars": {"NLB_PROBE": "1"}})
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_TOKEN_PATH" not in os.environ

    @ray.remote(num_cpus=1)
    class Trial:
        def where(self) -> tuple[str, str | None, int]:
            return ray.util.get_node_ip_address(), os.environ.get("NLB_PROBE"), os.getpid()

    actor = Trial.remote()
    ip, probe, worker = ray.get(actor.where.remote(), timeout=120)
    assert ip == "127.0.0.1" and probe == "1"
    pids = _tree(os.getpid())
    assert worker in pids
    sockets = _listening(pids)
    names = {name for name, _ in sockets}
    assert {"gcs_server", "raylet", "driver"} <= names, sockets
    assert any(name.startswith("ray::") for name in names), sockets
    assert all(_loopback(addr) for _, addr in sockets), sockets

    (folder,) = Path(short_temp).glob(f"{cluster.AUTH_DIR_PREFIX}{os.getpid()}_*")
    token_file = folder / cluster.AUTH_TOKEN_FILE
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    assert len(token) == 64
    (raylet,) = [p for p in pids if Path(f"/proc/{p}/comm").read_text().strip() == "raylet"]
    env = dict(v.split("=", 1) for v in Path(f"/proc/{raylet}/environ").read_text()
               .split("\0") if "=" in v)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token_file)

    gcs = ray.get_runtime_context().gcs_address
    node = ray.nodes()[0]
    raylet_address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
    assert gcs.startswith("127.0.0.1:") and raylet_address.startswith("127.0.0.1:")
    for address, method in ((gcs, GCS_METHOD), (raylet_address, RAYLET_METHOD)):
        assert _call(address, method, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _call(address, method, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED
        assert _call(address, method, token) == grpc.StatusCode.OK
    ray.shutdown()
    assert all(os.environ.get(v) == ("disabled" if v == "RAY_AUTH_MODE" else None)
               for v in AUTH_VARS)
