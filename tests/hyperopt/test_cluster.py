"""Searches on real multi-node Ray clusters with token authentication, a killed driver,
trials that cannot start, a node that does not share the storage, and local searches
that must stay local (nlb_ndt.hyperopt.cluster and its hooks).

Every cluster here is real: one token-authenticated head (`ray.cluster_utils.Cluster`)
serves the cluster tests, which add their own worker nodes (separate raylets on this
machine; the one that does not share NLB_HOME is a `ray start` inside its own mount
namespace with a tmpfs over NLB_HOME), and the killed driver is a real `run_hyperopt.py`
process group sent SIGKILL. Ray's temp dirs are short folders under /tmp (unix socket
paths are limited to ~107 characters) removed afterwards; RAY_TMPDIR points there, so
`--address auto` finds the test's own cluster and /tmp/ray is never touched. The tests
that start a private Ray come first: the shared head lives until the module ends.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers import ROOT, load_script

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.render import generate_configs

hyperopt = pytest.importorskip("nlb_ndt.hyperopt")
cluster_mod = pytest.importorskip("nlb_ndt.hyperopt.cluster")

#: Trials of a few seconds that save their state every epoch, so a trial can be caught
#: mid-run and its resume seen (the smoke overrides would fix 4 epochs).
LAST_EPOCH = 8
LONG_OPTS = ["TRAIN.NUM_UPDATES", str(LAST_EPOCH), "TRAIN.VAL_INTERVAL", "2",
             "TRAIN.CHECKPOINT_INTERVAL", "1", "TRAIN.LOG_INTERVAL", "2",
             "TRAIN.MASK_SPAN_RAMP_START", "1", "TRAIN.MASK_SPAN_RAMP_END", "3"]
#: Trials long enough to be caught a few seconds after they start (reused actors start
#: the next trial at once, and an epoch takes a fraction of a second) and to outlast the
#: 2-3 s a Ray worker trains on after its raylet is killed, before it notices and exits.
KILL_EPOCHS = 24


# ---------------------------------------------------------------------------- fixtures
def _short_temp(prefix: str) -> Path:
    temp = Path("/tmp") / f"{prefix}_{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    return temp


def _kill_ray_of(marker: str) -> None:
    """SIGKILL whatever still runs of the Ray whose temp dir is `marker` (ours only)."""
    for pid, _ in _ray_processes(marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def search_env(nlb_env, tmp_path, monkeypatch):
    """Configs and cached tensors in the synthetic NLB_HOME, this test's RAY_TUNE_HOME and a
    short Ray temp dir; Ray shut down and the temp dir removed whatever happens."""
    import ray

    from nlb_ndt.data.preprocess import build_tensors
    from nlb_ndt.paths import get_paths

    monkeypatch.setenv("RAY_TUNE_HOME", str(tmp_path / "ray_results"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    paths = get_paths()
    generate_configs(["synthetic"], paths.config_dir, overwrite=True, paths=paths)
    cfg = load_config(paths.config_dir / "synthetic.yaml")
    build_tensors(cfg.DATA.DATASET, phase="val", bin_ms=cfg.DATA.BIN_MS, paths=paths)
    temp = _short_temp("rc")
    try:
        yield paths, str(temp)
    finally:
        ray.shutdown()
        _kill_ray_of(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_temp():
    """A short Ray temp dir; Ray shut down and the dir removed whatever happens."""
    import ray

    temp = _short_temp("rt")
    try:
        yield str(temp)
    finally:
        ray.shutdown()
        _kill_ray_of(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_auth(tmp_path_factory):
    """Token authentication as README sets it up: RAY_AUTH_MODE=token and a 0600 token
    file in RAY_AUTH_TOKEN_PATH, in the environment of the driver and of every node
    started here; Ray's cached settings reloaded on the way in and out."""
    from nlb_ndt.hyperopt.ray_compat import reload_auth_settings

    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        reload_auth_settings()
        yield token
    reload_auth_settings()


@pytest.fixture(scope="module")
def shared_cluster(cluster_auth):
    """(Cluster, temp dir): one head node (1 CPU) for this module's cluster tests, with
    RAY_TMPDIR at its temp dir. Each test adds its worker nodes and removes them."""
    from ray.cluster_utils import Cluster

    temp = _short_temp("rh")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(temp))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            yield cluster, str(temp)
        finally:
            cluster.shutdown()
            _kill_ray_of(str(temp))
            shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------- helpers
def _trial_dirs(exp_dir: Path) -> list[Path]:
    return sorted(p for p in exp_dir.glob("trial_*") if p.is_dir())


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _run_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


def _our_files(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file the trial itself wrote (Ray's own files aside)."""
    files = [run_dir / name for name in ("config.yaml", "run_info.json", "metrics.csv",
                                         "state.pt")] + sorted((run_dir / "ckpts").glob("*"))
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def _resumed_epoch(run_dir: Path) -> int | None:
    """The epoch the trial's log says it resumed at (None: it never resumed)."""
    found = re.findall(r"resumed \S+ at epoch (\d+)", (run_dir / "trial.log").read_text())
    return int(found[-1]) if found else None


def _running_rows(run_dir: Path, min_epoch: int) -> list[dict] | None:
    """The trial's metrics rows if it is still running, past `min_epoch`, with its state
    saved (state.pt is written every epoch, so it holds the last row)."""
    try:
        rows = _rows(run_dir)
    except (OSError, csv.Error):
        return None
    if (run_dir / "state.pt").exists() and rows and rows[-1]["done"] == "False" \
            and int(rows[-1]["epoch"]) >= min_epoch:
        return rows
    return None


def _check_resumed(run_dir: Path, before: list[dict], min_epoch: int,
                   last: int = LAST_EPOCH) -> None:
    """The trial finished, its log says it resumed at `min_epoch` or later, and its
    metrics continue the rows seen before the interruption (same values and timings,
    not retrained)."""
    rows = _rows(run_dir)
    assert rows[-1]["done"] == "True" and int(rows[-1]["epoch"]) == last
    resumed = _resumed_epoch(run_dir)
    assert resumed is not None and resumed >= min_epoch, resumed
    # Rows up to the saved state are kept as they were (timings included); later ones
    # were written after the last state.pt and are trained again.
    kept = [r for r in before if int(r["epoch"]) <= resumed]
    assert kept and rows[:len(kept)] == kept
    assert [int(r["epoch"]) for r in rows] == list(range(2, last + 1, 2))


def _ray_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every other process whose command line or environment
    names `marker` (a Ray temp dir: Ray's workers rename themselves "ray::...", but keep
    the RAY_TMPDIR they were started with)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (proc / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd or marker in env:
            found.append((int(proc.name), cmd))
    return found


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------- tests with a private Ray
@pytest.mark.slow
def test_local_search_ignores_stale_cluster_and_bad_address_fails_fast(
        search_env, monkeypatch, capsys):
    """Verify that a local search starts its own Ray although RAY_ADDRESS and Ray's
    ray_current_cluster file point at a dead cluster, and that an unreachable --address
    (HOST:PORT, or 'auto' resolving to it) fails in seconds: exit 1, one line naming the
    address and `ray status`, no traceback."""
    paths, temp = search_env
    dead = "127.0.0.1:1"
    monkeypatch.setenv("RAY_TMPDIR", temp)  # Ray's ray_current_cluster: <temp>/ray
    (Path(temp) / "ray").mkdir()
    (Path(temp) / "ray" / "ray_current_cluster").write_text(dead)
    monkeypatch.setenv("RAY_ADDRESS", dead)
    summary = hyperopt.run_search("synthetic", samples=1, seed=0, smoke_test=True,
                                  cpus_per_trial=1, gpus_per_trial=0, num_cpus=1,
                                  opts=["TRAIN.NUM_UPDATES", "2"], paths=paths,
                                  ray_temp_dir=temp, verbose=0)
    assert [t["status"] for t in summary.trials] == ["done"]
    assert os.environ["RAY_ADDRESS"] == dead  # hidden from ray.init only

    script = load_script("run_hyperopt")
    closed = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", closed)
    port = closed.rsplit(":", 1)[1]
    # 'auto' resolves through RAY_ADDRESS; Ray turns 127.0.0.1 into this machine's IP.
    for address, named in ((closed, closed), ("auto", rf"[\d.]+:{port}")):
        capsys.readouterr()
        start = time.monotonic()
        code = script.main(["synthetic", "--address", address, "--smoke-test", "--quiet"])
        elapsed = time.monotonic() - start
        err = capsys.readouterr().err.strip()
        assert code == 1 and elapsed < 30, (code, elapsed)
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert re.match(rf"error: cannot reach the Ray cluster at {named} ", err), err
        assert re.search(rf"`ray status --address {named}`", err), err


def _catch_second_trial(proc, exp_dir: Path, log: Path) -> tuple[Path, Path, list[dict]]:
    """(finished trial, running trial, its rows) once the first trial has finished and
    the second's folder is 2 s old with its state saved at an early epoch."""
    deadline, seen = time.monotonic() + 180, {}
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        dirs = _trial_dirs(exp_dir) if exp_dir.is_dir() else []
        for d in dirs:
            seen.setdefault(d, time.monotonic())
        if len(dirs) < 2 or time.monotonic() - seen[dirs[1]] < 2:
            continue
        with contextlib.suppress(OSError, csv.Error, IndexError):
            rows = _running_rows(dirs[1], min_epoch=2)
            if rows and _rows(dirs[0])[-1]["done"] == "True":
                return dirs[0], dirs[1], rows
    raise AssertionError(f"never caught the second trial early: {log.read_text()[-3000:]}")


def _ray_processes_after(marker: str, seconds: float) -> list:
    """The Ray processes of `marker` still alive after waiting up to `seconds` for them:
    workers (a reused trial actor too) exit as they notice their raylet is gone."""
    deadline = time.monotonic() + seconds
    while _ray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _ray_processes(marker)


@pytest.mark.slow
def test_killed_driver_loses_no_trial_leaves_no_ray_behind_and_resumes(search_env,
                                                                      tmp_path):
    """Verify that SIGKILL to a running run_hyperopt.py (its whole process group) a few
    seconds after a trial started (its folder 2 s old, well before Tune's own 10 s save)
    leaves no process of its Ray behind and loses no trial: the same command run again
    finishes the search with that very trial (same id, same folder) continued from its
    state.pt instead of epoch 0, and the finished trial's files byte-for-byte unchanged.
    (The first trial is in Tune's very first save; the second shows the difference.)"""
    paths, _ = search_env
    tmpdir = _short_temp("rk")  # this run's Ray: <tmpdir>/ray
    env = dict(os.environ, RAY_TMPDIR=str(tmpdir), OMP_NUM_THREADS="1")
    env.pop("TUNE_GLOBAL_CHECKPOINT_S", None)  # the project's own setting is under test
    cmd = [sys.executable, str(ROOT / "run_hyperopt.py"), "synthetic", "--samples", "2",
           "--seed", "0", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
           "--max-concurrent", "1", "--quiet", "--opts", *LONG_OPTS[2:],
           "TRAIN.NUM_UPDATES", str(KILL_EPOCHS)]
    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0"
    log_path = tmp_path / "first.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished_dir, running_dir, rows_before = _catch_second_trial(proc, exp_dir, log_path)
        kept = _our_files(finished_dir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        marker = str(tmpdir)
        assert not (left := _ray_processes_after(marker, 30)), left

        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               check=False, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _trial_dirs(exp_dir) == [finished_dir, running_dir]
        assert _our_files(finished_dir) == kept
        _check_resumed(running_dir, rows_before, min_epoch=2, last=KILL_EPOCHS)
        info = _run_info(running_dir)
        assert len(info["attempts"]) == 2, (info, (running_dir / "trial.log").read_text())
        with (exp_dir / "trials.csv").open() as f:
            ids = {r["trial_id"]: r["status"] for r in csv.DictReader(f)}
        assert ids == {d.name.rsplit("_", 1)[1]: "done" for d in (finished_dir, running_dir)}
        assert not (left := _ray_processes_after(marker, 30)), left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_ray_of(str(tmpdir))
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.slow
def test_trials_that_cannot_start_end_the_search_with_one_line(ray_temp, tmp_path, caplog):
    """Verify that a Tune run whose trials wait to start while none runs (each asks for
    2 CPUs of a private Ray of 1) ends once PendingWatch's timeout passes, instead of
    waiting forever: one error line names what the trials ask for and what the cluster
    has, and the run is saved, so it can be restored."""
    from ray import tune

    cluster_mod.connect(None, num_cpus=1, temp_dir=ray_temp)

    def trainable(config):
        tune.report({"x": 1.0})

    storage = tmp_path / "results"
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 2}),
                       tune_config=tune.TuneConfig(num_samples=2),
                       run_config=tune.RunConfig(
                           name="waits", storage_path=str(storage), verbose=0,
                           callbacks=[cluster_mod.PendingWatch(timeout_s=3)]))
    start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=cluster_mod.__name__):
        results = tuner.fit()
    assert time.monotonic() - start < 60
    (line,) = [r.getMessage() for r in caplog.records if r.name == cluster_mod.__name__]
    assert line.startswith("no trial started within 3 s: 2 trial(s) wait for CPU 2 each")
    assert "cluster has CPU 1 free of CPU 1" in line and "\n" not in line
    assert len(results) == 2  # neither ever reported
    assert all("x" not in results[i].metrics for i in range(2))
    assert tune.Tuner.can_restore(storage / "waits")


# ------------------------------------------------------------------ tests on clusters
@pytest.mark.slow
def test_search_on_two_nodes_survives_a_lost_node(search_env, shared_cluster, capsys):
    """Verify a search on a token-authenticated two-node cluster (head + worker, 1 CPU
    each): trials run on both nodes and record them; removing the worker while its trial
    runs costs that trial one retry, which resumes from its state.pt on the head; the
    command line with --address then adds a trial (storage checked on two nodes again)
    without rewriting a finished trial's files, and running it again changes nothing."""
    paths, _ = search_env
    cluster, temp = shared_cluster
    worker = cluster.add_node(num_cpus=1)
    try:
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0"
        lost: dict = {}
        done = threading.Event()

        def remove_worker_mid_trial():
            while not done.is_set():
                for run_dir in _trial_dirs(exp_dir) if exp_dir.is_dir() else []:
                    try:
                        on_worker = _run_info(run_dir)["node"]["node_id"] == worker_id
                    except (OSError, ValueError, KeyError):
                        continue
                    rows = _running_rows(run_dir, min_epoch=4) if on_worker else None
                    if rows:
                        lost.update(run_dir=run_dir, rows=rows)
                        cluster.remove_node(worker)
                        return
                time.sleep(0.1)

        poller = threading.Thread(target=remove_worker_mid_trial, daemon=True)
        poller.start()
        try:
            summary = hyperopt.run_search(
                "synthetic", address=cluster.address, samples=2, seed=0, cpus_per_trial=1,
                gpus_per_trial=0, opts=LONG_OPTS, paths=paths, verbose=0)
        finally:
            done.set()
            poller.join()
        assert lost, "no trial was caught running on the worker node"
        assert [t["status"] for t in summary.trials] == ["done", "done"]
        lost_dir = lost["run_dir"]
        _check_resumed(lost_dir, lost["rows"], min_epoch=3)
        info = _run_info(lost_dir)
        assert [a["node_id"] for a in info["attempts"]] == [worker_id, head_id]
        assert info["node"]["device"] == "cpu" and info["node"]["host"]
        by_dir = {Path(t["run_dir"]): t for t in summary.trials}
        assert by_dir[lost_dir]["node_id"] == head_id and by_dir[lost_dir]["attempts"] == 2
        other = next(d for d in by_dir if d != lost_dir)
        assert _run_info(other)["node"]["node_id"] in (head_id, worker_id)
        with (exp_dir / "trials.csv").open() as f:
            table = list(csv.DictReader(f))
        assert {"host", "node_id", "device", "attempts"} <= set(table[0])
        assert {r["node_id"] for r in table} == {head_id}  # both ended on the head

        # README's command line (--address auto: the head, like `ray start --head`, wrote
        # <RAY_TMPDIR>/ray/ray_current_cluster) joins, with a new worker, adds a trial.
        worker = cluster.add_node(num_cpus=1)
        current = Path(temp) / "ray" / "ray_current_cluster"
        assert current.read_text().strip() == cluster.address
        before = {d: _our_files(d) for d in _trial_dirs(exp_dir)}
        argv = ["synthetic", "--address", "auto", "--samples", "3", "--seed", "0",
                "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--quiet",
                "--opts", *LONG_OPTS]
        script = load_script("run_hyperopt")
        assert script.main(argv) == 0
        dirs = _trial_dirs(exp_dir)
        assert len(dirs) == 3
        assert {d: _our_files(d) for d in before} == before
        assert _rows(dirs[2])[-1]["done"] == "True"
        assert not list(exp_dir.glob(f"{cluster_mod.TOKEN_PREFIX}*"))
        assert not list(paths.ndt_cache_dir.glob(f"{cluster_mod.TOKEN_PREFIX}*"))
        all_before = {d: _our_files(d) for d in dirs}
        table_before = (exp_dir / "trials.csv").read_text()
        assert script.main(argv) == 0
        assert {d: _our_files(d) for d in _trial_dirs(exp_dir)} == all_before
        assert (exp_dir / "trials.csv").read_text() == table_before
        capsys.readouterr()
    finally:
        if worker in cluster.worker_nodes:
            cluster.remove_node(worker)  # the shared head is left alone


def _can_mount_private_tmpfs(where: Path) -> str | None:
    """None where a private mount namespace with a tmpfs can be made, else why not."""
    if not shutil.which("unshare"):
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs '{where}' && umount '{where}'"],
        capture_output=True, text=True, check=False)
    if probe.returncode:
        return f"cannot mount a private tmpfs here: {probe.stderr.strip()[:200]}"
    return None


@pytest.mark.slow
def test_node_without_shared_storage_stops_search_before_any_trial(
        search_env, shared_cluster, tmp_path, capsys):
    """Verify README's worker command and the storage check against a worker node that
    really does not see NLB_HOME: `ray start --address` (joining with the cluster's
    token from the environment) in its own mount namespace with a tmpfs over NLB_HOME,
    and `run_hyperopt.py --address auto`. The search stops before any trial, exit 1, with
    one line naming that node, the folder and the fix, and removes its token files."""
    import ray

    paths, _ = search_env
    cluster, _ = shared_cluster
    why = _can_mount_private_tmpfs(tmp_path)
    if why:
        pytest.skip(why)
    ray_start = (f"exec '{Path(sys.executable).parent / 'ray'}' start "
                 f"--address={cluster.address} --num-cpus=1 --block --disable-usage-stats")
    worker = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs '{paths.nlb_home}' && {ray_start}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "worker.log").open("w"),
        start_new_session=True)
    try:
        cluster_mod.connect(cluster.address)
        deadline = time.monotonic() + 90
        while len(cluster_mod.alive_nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        nodes = cluster_mod.alive_nodes()
        assert len(nodes) == 2, (tmp_path / "worker.log").read_text()
        (other,) = [n["NodeID"] for n in nodes if n["NodeID"] != cluster.head_node.node_id]
        ray.shutdown()

        capsys.readouterr()
        script = load_script("run_hyperopt")
        code = script.main(["synthetic", "--address", "auto", "--smoke-test", "--samples",
                            "3", "--seed", "0", "--cpus-per-trial", "1",
                            "--gpus-per-trial", "0", "--quiet"])
        message = capsys.readouterr().err.strip()
        assert code == 1
        assert message.count("\n") == 0 and "Traceback" not in message, message
        assert message.startswith("error: node ") and other in message, message
        assert str(paths.ndt_cache_dir) in message
        assert "NFS" in message and "NLB_HOME" in message
        exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0-smoke"
        assert not _trial_dirs(exp_dir)
        assert not list(exp_dir.glob(f"{cluster_mod.TOKEN_PREFIX}*"))
        assert not list(paths.ndt_cache_dir.glob(f"{cluster_mod.TOKEN_PREFIX}*"))
    finally:
        ray.shutdown()
        with contextlib.suppress(OSError):
            os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
