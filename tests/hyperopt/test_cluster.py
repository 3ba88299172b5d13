"""Searches on real multi-node Ray clusters, a killed driver, a node that does not share the
storage, and local searches that must stay local (nlb_ndt.hyperopt.cluster and its hooks).

Every cluster here is real: `ray.cluster_utils.Cluster` starts a head and worker nodes as
separate raylets on this machine, a worker that does not share NLB_HOME is a `ray start`
inside its own mount namespace with a tmpfs over NLB_HOME, and the killed driver is a
real `run_hyperopt.py` process group sent SIGKILL. Ray's temp dirs are short folders under
/tmp (unix socket paths are limited to ~107 characters) removed afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
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
LONG_OPTS = ["TRAIN.NUM_UPDATES", "12", "TRAIN.VAL_INTERVAL", "2",
             "TRAIN.CHECKPOINT_INTERVAL", "1", "TRAIN.LOG_INTERVAL", "2",
             "TRAIN.MASK_SPAN_RAMP_START", "1", "TRAIN.MASK_SPAN_RAMP_END", "3"]
LAST_EPOCH = 12
RAY_ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")


# ---------------------------------------------------------------------------- fixtures
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
    temp = Path("/tmp") / f"rc_{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        yield paths, str(temp)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def keep_ray_address_file():
    """`Cluster` (and `ray start`) write /tmp/ray/ray_current_cluster: put back whatever
    was there before (a real cluster's file stays as it was)."""
    saved = RAY_ADDRESS_FILE.read_bytes() if RAY_ADDRESS_FILE.exists() else None
    had_dir = RAY_ADDRESS_FILE.parent.exists()
    RAY_ADDRESS_FILE.parent.mkdir(parents=True, exist_ok=True)  # Cluster needs it
    try:
        yield RAY_ADDRESS_FILE
    finally:
        if saved is not None:
            RAY_ADDRESS_FILE.write_bytes(saved)
        else:
            RAY_ADDRESS_FILE.unlink(missing_ok=True)
            if not had_dir:  # only if empty: another Ray may have come since
                with contextlib.suppress(OSError):
                    RAY_ADDRESS_FILE.parent.rmdir()


def _start_cluster(temp: str, workers: int = 1):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp})
    nodes = [cluster.add_node(num_cpus=1, temp_dir=temp) for _ in range(workers)]
    return cluster, nodes


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


def _mid_run(run_dir: Path) -> list[dict] | None:
    """The trial's metrics rows if it is running past epoch 4 with its state saved
    (state.pt of epoch 3 or later, so it holds the row of epoch 2)."""
    try:
        rows = _rows(run_dir)
    except (OSError, csv.Error):
        return None
    if (run_dir / "state.pt").exists() and rows and rows[-1]["done"] == "False" \
            and int(rows[-1]["epoch"]) >= 4:
        return rows
    return None


def _check_resumed(run_dir: Path, before: list[dict]) -> None:
    """The trial finished, its log says it resumed past epoch 0, and its metrics continue
    the rows seen before the interruption (same values and timings, not retrained)."""
    rows = _rows(run_dir)
    assert rows[-1]["done"] == "True" and int(rows[-1]["epoch"]) == LAST_EPOCH
    resumed = _resumed_epoch(run_dir)
    assert resumed is not None and resumed >= 3, resumed
    # Rows up to the saved state are kept as they were (timings included); later ones
    # were written after the last state.pt and are trained again.
    kept = [r for r in before if int(r["epoch"]) <= resumed]
    assert kept and rows[:len(kept)] == kept
    assert [int(r["epoch"]) for r in rows] == list(range(2, LAST_EPOCH + 1, 2))


def _ray_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line names `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append((int(proc.name), cmd))
    return found


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_search_on_two_nodes_survives_a_lost_node(search_env, keep_ray_address_file,
                                                  capsys):
    """Verify a search on a two-node cluster (head + worker, 1 CPU each): trials run on
    both nodes and record them; removing the worker while its trial runs costs that trial
    one retry, which resumes from its state.pt on the head; the command line with
    --address then adds a trial (storage checked on two nodes again) without rewriting a
    finished trial's files, and running it again changes nothing."""
    paths, temp = search_env
    cluster, (worker,) = _start_cluster(temp)
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
                    rows = _mid_run(run_dir) if on_worker else None
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
        _check_resumed(lost_dir, lost["rows"])
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

        # README's command line (--address auto: Cluster, like `ray start --head`, wrote
        # /tmp/ray/ray_current_cluster) joins the cluster, with a new worker, and adds a
        # third trial.
        cluster.add_node(num_cpus=1, temp_dir=temp)
        assert keep_ray_address_file.read_text().strip() == cluster.address
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
        cluster.shutdown()


@pytest.mark.slow
def test_killed_driver_leaves_no_ray_behind_and_resumes(search_env, tmp_path):
    """Verify that SIGKILL to a running run_hyperopt.py (its whole process group, mid
    trial) leaves no process of its Ray behind, and that the same command run again
    finishes the search: the finished trial's files are byte-for-byte unchanged and the
    interrupted trial continues from its state.pt instead of restarting at epoch 0."""
    paths, _ = search_env
    tmpdir = Path("/tmp") / f"rk_{uuid.uuid4().hex[:8]}"  # this run's Ray: <tmpdir>/ray
    tmpdir.mkdir()
    # Tune saves its experiment state every second (default: 10 s), so a short trial is
    # in the saved state when the driver dies.
    env = dict(os.environ, RAY_TMPDIR=str(tmpdir), TUNE_GLOBAL_CHECKPOINT_S="1",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "run_hyperopt.py"), "synthetic", "--samples", "2",
           "--seed", "0", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
           "--max-concurrent", "1", "--quiet", "--opts", *LONG_OPTS]
    exp_dir = paths.ray_tune_home / "synthetic" / "synthetic-s0"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        caught = None
        while caught is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            dirs = _trial_dirs(exp_dir) if exp_dir.is_dir() else []
            states = list(exp_dir.glob("experiment_state-*.json")) if dirs else []
            if len(dirs) < 2 or not states:
                continue
            with_rows = [d for d in dirs if (d / "metrics.csv").exists()]
            finished = [d for d in with_rows if _rows(d)[-1]["done"] == "True"]
            running = [d for d in with_rows if d not in finished]
            if len(finished) != 1 or len(running) != 1:
                continue
            rows = _mid_run(running[0])
            saved_after = max(s.stat().st_mtime for s in states) > \
                (running[0] / "run_info.json").stat().st_mtime
            if rows and saved_after:
                caught = (finished[0], running[0], rows)
        assert caught, f"never caught a trial mid-run: {(tmp_path / 'first.log').read_text()}"
        finished_dir, running_dir, rows_before = caught
        kept = _our_files(finished_dir)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        marker = str(tmpdir)
        left = _ray_processes(marker)
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:  # raylet children exit as they notice
            time.sleep(0.5)
            left = _ray_processes(marker)
        assert not left, f"Ray processes of the killed run are left: {left}"

        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               check=False, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _our_files(finished_dir) == kept
        _check_resumed(running_dir, rows_before)
        assert len(_trial_dirs(exp_dir)) == 2
        assert not _ray_processes(marker)
    finally:
        for pid, _ in _ray_processes(str(tmpdir)):  # only processes of this test's Ray
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(tmpdir, ignore_errors=True)


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
        search_env, tmp_path, monkeypatch, capsys):
    """Verify README's cluster commands and the storage check against a worker node that
    really does not see NLB_HOME: a head from `ray start --head --port`, a worker from
    `ray start --address` in its own mount namespace with a tmpfs over NLB_HOME, and
    `run_hyperopt.py --address auto`. The search stops before any trial, exit 1, with one
    line naming that node, the folder and the fix, and removes its token files."""
    import ray

    paths, temp = search_env
    why = _can_mount_private_tmpfs(tmp_path)
    if why:
        pytest.skip(why)
    # This test's Ray lives in <temp>/ray (its ray_current_cluster too: 'auto' reads it).
    monkeypatch.setenv("RAY_TMPDIR", temp)
    port = _closed_port()
    ray_bin = Path(sys.executable).parent / "ray"
    env = dict(os.environ, RAY_TMPDIR=temp)
    started = []

    def start(argv, log):
        started.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                        stderr=(tmp_path / log).open("w"),
                                        start_new_session=True))

    try:
        start([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=1", "--block",
               "--include-dashboard=false", "--disable-usage-stats"], "head.log")
        ray_start = (f"exec '{ray_bin}' start --address=127.0.0.1:{port} --num-cpus=1 "
                     f"--block --disable-usage-stats")
        start(["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f"mount -t tmpfs tmpfs '{paths.nlb_home}' && {ray_start}"], "worker.log")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(cluster_mod.ClusterError):
                cluster_mod.probe(f"127.0.0.1:{port}", timeout_s=1)
                break
            time.sleep(0.5)
        ray.init(address=f"127.0.0.1:{port}")
        while len(cluster_mod.alive_nodes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        nodes = cluster_mod.alive_nodes()
        assert len(nodes) == 2, (tmp_path / "worker.log").read_text()
        (other,) = [n["NodeID"] for n in nodes
                    if "node:__internal_head__" not in n["Resources"]]
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
        for proc in reversed(started):  # worker first, then the head
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid, _ in _ray_processes(temp):  # anything of this test's Ray still running
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_local_search_ignores_stale_cluster_and_bad_address_fails_fast(
        search_env, keep_ray_address_file, monkeypatch, capsys):
    """Verify that a local search starts its own Ray although RAY_ADDRESS and Ray's
    ray_current_cluster file point at a dead cluster, and that an unreachable --address
    (HOST:PORT, or 'auto' resolving to it) fails in seconds: exit 1, one line naming the
    address and `ray status`, no traceback."""
    paths, temp = search_env
    dead = "127.0.0.1:1"
    keep_ray_address_file.write_text(dead)
    monkeypatch.setenv("RAY_ADDRESS", dead)
    summary = hyperopt.run_search("synthetic", samples=1, seed=0, smoke_test=True,
                                  cpus_per_trial=1, gpus_per_trial=0, num_cpus=1,
                                  paths=paths, ray_temp_dir=temp, verbose=0)
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
