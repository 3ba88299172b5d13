"""download_data.py and nlb_ndt.data.download.sources's DANDI side, against a real local
HTTP server.

Every fault test ends in one of two states: the verified file is at its final path, or
the command exited non-zero with one `error:` line and nothing is at the final path.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_services import FakeServices, drop, fail, ignore_range, slow, truncate
from helpers import ROOT, SPEC, isolated_download_env, load_script, make_zip

from nlb_ndt.data.download import http as fetch
from nlb_ndt.data.download import sources as download
from nlb_ndt.paths import get_paths

SCRIPT = load_script("download_data")


@dataclass(frozen=True)
class Served:
    """One file the fake DANDI serves, and where it must end up."""

    asset_id: str
    data: bytes
    dest: Path
    content: str  # content-host path the download endpoint redirects to

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")



@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A started FakeServices with every endpoint and path variable pointed at it."""
    isolated_download_env(monkeypatch, tmp_path / "home")
    with FakeServices() as services:
        monkeypatch.setenv("NLB_DANDI_API_URL", services.dandi_api_url)
        monkeypatch.setenv("NLB_ZENODO_API_URL", services.zenodo_api_url)
        monkeypatch.setenv("NLB_EVAL_DATA_URL", services.add_file("/media/eval.h5", b"x"))
        yield services


def _serve(fake: FakeServices, rel: str, data: bytes, *, version: str = SPEC.version,
           sha256: str | None = None) -> Served:
    asset_id = fake.add_dandi_asset(SPEC.dandiset_id, version, rel, data, sha256=sha256)
    dest = get_paths().data_raw / SPEC.dandiset_id / rel
    return Served(asset_id, data, dest, fake.content_path(asset_id))


@pytest.fixture
def small(fake) -> tuple[Served, Served]:
    """mc_maze_small's train (256 KiB) and test (60 kB) files at the pinned version."""
    rng = random.Random(0)
    return (_serve(fake, SPEC.train_file, rng.randbytes(256 * 1024)),
            _serve(fake, SPEC.test_file, rng.randbytes(60_000)))


def _ok(capsys, *args: str) -> str:
    assert SCRIPT.main(["--datasets", SPEC.name, *args]) == 0
    return capsys.readouterr().out


def _fails(capsys, *args: str) -> list[str]:
    """Run expecting exit 1; returns stderr's lines after checking the error is one line."""
    assert SCRIPT.main(["--datasets", SPEC.name, "--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    assert sum(line.startswith("error: ") for line in err) == 1
    assert "Traceback" not in "\n".join(err)
    return err


def _start(range_header: str | None) -> int:
    assert range_header is not None and range_header.startswith("bytes=")
    return int(range_header[len("bytes="):].rstrip("-"))


def test_download_data_fetches_pinned_files_into_dandi_layout(fake, small, capsys):
    """Verify that both files follow the paginated list and the redirect, land byte-identical in
    the DANDI layout, and leave no .part behind."""
    out = _ok(capsys)
    list_path = f"/dandi/api/dandisets/000140/versions/{SPEC.version}/assets/"
    assert len(fake.requests_to(list_path)) == 2  # one asset per page: `next` was followed
    for served in small:
        assert served.dest.read_bytes() == served.data
        assert not served.part.exists()
        assert fake.requests_to(f"/dandi/api/assets/{served.asset_id}/")  # digest lookup
        assert fake.requests_to(f"/dandi/api/assets/{served.asset_id}/download/")
        assert fake.ranges(served.content) == [None]
    assert small[0].dest == (get_paths().data_raw / "000140/sub-Jenkins"
                             / "sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb")
    assert "done: 2 downloaded" in out


def test_download_data_skips_files_already_verified(fake, small, capsys):
    """Verify that a second run downloads nothing and reports both files as verified."""
    _ok(capsys)
    out = _ok(capsys)
    for served in small:
        assert len(fake.requests_to(served.content)) == 1
    assert "0 downloaded" in out and "2 already present and verified" in out


def test_download_data_replaces_file_that_fails_verification(fake, small, capsys):
    """Verify that a damaged file at the final path is replaced by a verified download."""
    train = small[0]
    train.dest.parent.mkdir(parents=True)
    train.dest.write_bytes(train.data[:-1] + b"\0")
    _ok(capsys)
    assert train.dest.read_bytes() == train.data


def test_download_data_dry_run_lists_files_and_sizes(fake, small, capsys):
    """Verify that --dry-run prints both files with their byte counts and fetches nothing."""
    out = _ok(capsys, "--dry-run")
    for served in small:
        line = next(line for line in out.splitlines() if served.dest.name in line)
        assert f"{len(served.data):,}" in line and "missing" in line
        assert not fake.requests_to(served.content)
        assert not fake.requests_to(f"/dandi/api/assets/{served.asset_id}/download/")
    assert "nothing was downloaded" in out
    assert not get_paths().data_raw.exists()


def test_download_data_draft_version_fetches_draft_assets(fake, small, capsys):
    """Verify that --version draft lists and fetches the draft's assets, not the pinned ones."""
    draft = _serve(fake, SPEC.train_file, b"draft" * 1000, version="draft")
    _serve(fake, SPEC.test_file, b"draft test", version="draft")
    _ok(capsys, "--version", "draft")
    assert draft.dest.read_bytes() == b"draft" * 1000
    assert not fake.requests_to(small[0].content)


def test_download_data_retries_server_errors_then_succeeds(fake, small, capsys):
    """Verify that 500 on the list and 500, 503 on the file are retried to a verified file."""
    train = small[0]
    fake.inject(f"/dandi/api/dandisets/000140/versions/{SPEC.version}/assets/", fail(500))
    fake.inject(train.content, fail(500), fail(503))
    _ok(capsys)
    assert train.dest.read_bytes() == train.data
    assert len(fake.requests_to(train.content)) == 3


def test_download_data_persistent_server_error_fails_cleanly(fake, small, capsys):
    """Verify that a server answering 503 every time ends in one line and no file."""
    train = small[0]
    fake.inject(train.content, *[fail(503)] * 10)
    err = _fails(capsys)
    assert "kept answering HTTP 503 after 4 attempts" in err[-1]
    assert not train.dest.exists()


def test_download_data_resumes_after_dropped_connection(fake, small, capsys):
    """Verify that a connection reset mid-file is resumed with a Range request in the same run."""
    train = small[0]
    fake.inject(train.content, drop(at=0.6))
    _ok(capsys)
    ranges = fake.ranges(train.content)
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < _start(ranges[1]) < len(train.data)
    assert train.dest.read_bytes() == train.data


def test_download_data_next_run_resumes_from_partial_file(fake, small, capsys, monkeypatch):
    """Verify that a run that gives up after a drop keeps the .part, and the next run resumes
    from exactly its size."""
    train = small[0]
    monkeypatch.setenv("NLB_DOWNLOAD_RETRIES", "1")
    fake.inject(train.content, drop(at=0.6))
    err = _fails(capsys)
    assert "re-running resumes it" in err[-1]
    assert not train.dest.exists()
    have = train.part.stat().st_size
    assert 0 < have < len(train.data)
    _ok(capsys)
    assert fake.ranges(train.content)[-1] == f"bytes={have}-"
    assert train.dest.read_bytes() == train.data


def test_download_data_resumes_truncated_body(fake, small, capsys):
    """Verify that bodies shorter than their Content-Length are resumed to a verified file."""
    train = small[0]
    fake.inject(train.content, truncate(at=0.3), truncate(at=0.5))
    _ok(capsys)
    starts = [_start(r) for r in fake.ranges(train.content)[1:]]
    assert len(starts) == 2 and 0 < starts[0] <= starts[1] < len(train.data)
    assert train.dest.read_bytes() == train.data


def test_download_data_failures_that_make_progress_do_not_use_up_retries(
        fake, small, capsys, monkeypatch):
    """Verify that attempts which each add bytes to the .part are not counted against the
    retry limit, so a flaky link still finishes a big file."""
    train = small[0]
    monkeypatch.setenv("NLB_DOWNLOAD_RETRIES", "2")
    chunk = fetch.CHUNK_BYTES
    # Each truncated answer carries a little more than one chunk of what is still missing.
    fake.inject(train.content, *[truncate(at=(chunk + 1000) / (len(train.data) - i * chunk))
                                 for i in range(3)])
    _ok(capsys)
    assert len(fake.requests_to(train.content)) == 4
    assert train.dest.read_bytes() == train.data


def test_download_data_persistent_truncation_fails_cleanly(fake, small, capsys):
    """Verify that a body that always stops short ends in one line, a kept .part, no file."""
    train = small[0]
    fake.inject(train.content, *[truncate(at=0.9)] * 10)
    err = _fails(capsys)
    assert "breaking off" in err[-1]
    assert not train.dest.exists() and train.part.exists()


def test_download_data_wrong_digest_fails_without_file(fake, capsys):
    """Verify that a sha256 mismatch stops with one line and leaves neither file nor .part."""
    bad = _serve(fake, SPEC.train_file, b"a" * 5000, sha256="0" * 64)
    _serve(fake, SPEC.test_file, b"b" * 5000)
    err = _fails(capsys)
    assert len(err) == 1 and "sha256 mismatch" in err[0]
    assert not bad.dest.exists() and not bad.part.exists()


def test_download_data_digest_mismatch_after_resume_restarts_once(fake, small, capsys):
    """Verify that a .part whose bytes are foreign is detected by the digest and the file is
    fetched again from the start."""
    train = small[0]
    train.part.parent.mkdir(parents=True)
    train.part.write_bytes(b"\xff" * 10_000)
    _ok(capsys)
    assert fake.ranges(train.content) == ["bytes=10000-", None]
    assert train.dest.read_bytes() == train.data


def test_download_data_server_ignoring_range_restarts(fake, small, capsys):
    """Verify that a 200 answer to a Range request rewrites the .part from the start."""
    train = small[0]
    train.part.parent.mkdir(parents=True)
    train.part.write_bytes(train.data[:10_000])
    fake.inject(train.content, ignore_range())
    _ok(capsys)
    assert fake.ranges(train.content) == ["bytes=10000-"]
    assert train.dest.read_bytes() == train.data


def test_download_data_not_found_fails_with_one_line(fake, small, capsys):
    """Verify that a 404 from the content host is permanent: one line, no retry, no file."""
    train = small[0]
    fake.inject(train.content, fail(404))
    err = _fails(capsys)
    assert len(err) == 1 and "HTTP 404" in err[0] and train.dest.name in err[0]
    assert len(fake.requests_to(train.content)) == 1
    assert not train.dest.exists()


def test_download_data_missing_asset_is_named(fake, capsys):
    """Verify that a version lacking one of the dataset's files says which one."""
    _serve(fake, SPEC.train_file, b"only train")
    err = _fails(capsys)
    assert len(err) == 1 and SPEC.test_file in err[0] and "000140" in err[0]


def test_download_data_unreachable_host_says_how_to_use_local_files(fake, capsys, monkeypatch):
    """Verify that an unreachable API yields one line naming the host and NLB_DATA_RAW."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("NLB_DANDI_API_URL", f"http://127.0.0.1:{port}/api")
    err = _fails(capsys)
    assert f"cannot reach 127.0.0.1:{port}" in err[-1] and "connection refused" in err[-1]
    assert "NLB_DATA_RAW" in err[-1]


def test_download_data_refuses_synthetic_dataset_folder(fake, small, capsys):
    """Verify that a dandiset folder holding SYNTHETIC.json is refused before any request."""
    folder = get_paths().data_raw / "000140"
    folder.mkdir(parents=True)
    (folder / "SYNTHETIC.json").write_text("{}")
    err = _fails(capsys)
    assert len(err) == 1 and "synthetic" in err[0] and str(folder) in err[0]
    assert fake.log == []


def test_download_data_unknown_dataset_lists_valid_names(fake, capsys):
    """Verify that a misspelt dataset fails with one line listing the valid names."""
    assert SCRIPT.main(["--datasets", "mc_mazy", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mc_maze_small" in err[0]
    assert fake.log == []


def test_fetch_eval_data_downloads_and_verifies(fake):
    """Verify that the eval file lands at paths.eval_data_test when its digest matches."""
    data = random.Random(1).randbytes(100_000)
    url = fake.add_file("/media/eval_data_test.h5", data)
    result = download.fetch_eval_data(url=url, sha256=hashlib.sha256(data).hexdigest(),
                                      size=len(data))
    assert result.status == "downloaded"
    assert get_paths().eval_data_test.read_bytes() == data


def test_download_data_eval_data_of_wrong_size_is_refused(fake, small, capsys):
    """Verify that --eval-data refuses a served file unlike the published one, leaving none."""
    err = _fails(capsys, "--eval-data")
    assert "eval_data_test.h5" in err[-1] and f"{download.EVAL_DATA_SIZE:,}" in err[-1]
    assert not get_paths().eval_data_test.exists()
    assert small[0].dest.read_bytes() == small[0].data  # the NWB files came first


def test_download_data_eval_data_alone_skips_dandi(fake, small, capsys):
    """Verify that --eval-data without --datasets plans only the eval file, asking DANDI nothing."""
    assert SCRIPT.main(["--eval-data", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "eval_data_test.h5" in out and f"{download.EVAL_DATA_SIZE:,}" in out
    assert "dry run: 1 file," in out
    assert not [seen for seen in fake.log if seen.path.startswith("/dandi/")]


def test_fetch_eval_data_refuses_to_replace_synthetic_ground_truth(fake):
    """Verify that eval data is not written over the synthetic dataset's ground truth."""
    paths = get_paths()
    (paths.data_raw / "000140").mkdir(parents=True)
    (paths.data_raw / "000140" / "SYNTHETIC.json").write_text("{}")
    paths.eval_data_test.write_bytes(b"synthetic truth")
    with pytest.raises(download.DownloadError, match="synthetic"):
        download.fetch_eval_data()
    assert paths.eval_data_test.read_bytes() == b"synthetic truth"


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT at its default, as a terminal's Ctrl-C finds it. A process
    started with SIGINT ignored (as a test worker may pass it on) keeps it ignored, and
    Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_download_data_sigint_keeps_part_and_rerun_resumes(fake, small, capsys):
    """Verify that Ctrl-C during a slow download leaves the .part, and a re-run resumes it with
    a Range request from its size to byte-identical content."""
    train = small[0]
    fake.inject(train.content, slow(delay_s=0.03, chunk=4096))  # 256 KiB in about 2 s
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "download_data.py"), "--datasets", SPEC.name],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 30
        while not (train.part.exists() and train.part.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no partial file appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    have = train.part.stat().st_size
    assert 0 < have < len(train.data) and not train.dest.exists()
    _ok(capsys)
    assert fake.ranges(train.content)[-1] == f"bytes={have}-"
    assert train.dest.read_bytes() == train.data


# ------------------------------------------------ the released checkpoints (Zenodo)

RECORD, KEY = download.CHECKPOINT_RECORD_ID, download.CHECKPOINT_FILE
TOP = "ae-nlb-2021-model-checkpoints"
_RNG = random.Random(0)
MEMBERS = {
    f"{TOP}/README.md": b"AE Studio checkpoints (zenodo)\n",
    f"{TOP}/mc_maze_small/models.csv": b",trial_id,val_ckpt,co-bps\n0,0a1b2c3d,lve,0.35\n",
    f"{TOP}/mc_maze_small/0a1b2c3d.lve.pth": _RNG.randbytes(150_000),
    f"{TOP}/mc_rtt/models.csv": b",trial_id,val_ckpt,co-bps\n0,deadbeef,lfve,0.19\n",
    f"{TOP}/mc_rtt/deadbeef.lfve.pth": _RNG.randbytes(50_000),
}



CHECKPOINTS_SCRIPT = load_script("download_checkpoints")





@pytest.fixture
def zenodo(tmp_path, monkeypatch):
    """A started FakeServices with the Zenodo endpoint and path variables pointed at it."""
    isolated_download_env(monkeypatch, tmp_path / "home")
    with FakeServices() as services:
        monkeypatch.setenv("NLB_ZENODO_API_URL", services.zenodo_api_url)
        yield services


@pytest.fixture
def release_zip(zenodo) -> tuple[bytes, str]:
    """The served checkpoint zip and its content path."""
    data = make_zip(MEMBERS)
    return data, zenodo.add_zenodo_file(RECORD, KEY, data)


def _release_root() -> Path:
    return get_paths().submission_validation_root


def _checkpoints_fail(capsys, *args: str) -> list[str]:
    assert CHECKPOINTS_SCRIPT.main(["--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and sum(e.startswith("error: ") for e in err) == 1
    assert "Traceback" not in "\n".join(err)
    return err


def test_download_checkpoints_extracts_into_dataset_layout(zenodo, release_zip, capsys):
    """Verify that the release_zip is fetched from links.content, verified, kept, and extracted
    with its top folder dropped: <root>/<dataset>/models.csv and <trial>.<ckpt>.pth."""
    data, content = release_zip
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    root = _release_root()
    for name, member in MEMBERS.items():
        assert (root / name.removeprefix(f"{TOP}/")).read_bytes() == member
    assert (root / KEY).read_bytes() == data
    assert not (root / TOP).exists()
    assert zenodo.ranges(content) == [None]
    assert not list(root.rglob("*.part"))
    assert "done: 1 downloaded" in capsys.readouterr().out


def test_download_checkpoints_skips_complete_extraction(zenodo, release_zip, capsys):
    """Verify that a second run fetches nothing and reports the release_zip as present."""
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    assert len(zenodo.requests_to(release_zip[1])) == 1
    assert "1 already present and verified" in capsys.readouterr().out.splitlines()[-1]


def test_download_checkpoints_restores_missing_member_from_kept_zip(zenodo, release_zip):
    """Verify that a deleted extracted file is restored from the verified zip, unchanged files
    are left alone, and nothing is downloaded again."""
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    root = _release_root()
    ckpt, csv = root / "mc_maze_small/0a1b2c3d.lve.pth", root / "mc_rtt/models.csv"
    ckpt.unlink()
    before = csv.stat().st_mtime_ns
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    assert ckpt.read_bytes() == MEMBERS[f"{TOP}/mc_maze_small/0a1b2c3d.lve.pth"]
    assert csv.stat().st_mtime_ns == before
    assert len(zenodo.requests_to(release_zip[1])) == 1


def test_download_checkpoints_resumes_after_drop_and_server_errors(zenodo, release_zip):
    """Verify that 503, a dropped connection and 500 are ridden out to a verified release_zip."""
    data, content = release_zip
    zenodo.inject(content, fail(503), drop(at=0.7), fail(500))
    assert CHECKPOINTS_SCRIPT.main([]) == 0
    ranges = zenodo.ranges(content)
    assert ranges[:2] == [None, None] and len(ranges) == 4
    assert 0 < int(ranges[3].removeprefix("bytes=").rstrip("-")) < len(data)
    assert (_release_root() / KEY).read_bytes() == data


def test_download_checkpoints_md5_mismatch_fails_cleanly(zenodo, capsys):
    """Verify that an md5 mismatch stops with one line, leaving no zip and no extraction."""
    zenodo.add_zenodo_file(RECORD, KEY, make_zip(MEMBERS), md5="0" * 32)
    err = _checkpoints_fail(capsys)
    assert len(err) == 1 and "md5 mismatch" in err[0]
    root = _release_root()
    assert not (root / KEY).exists() and not (root / "mc_maze_small").exists()


def test_download_checkpoints_refuses_parent_member(zenodo, tmp_path, capsys):
    """Verify that a zip with a `../` member is refused before anything is extracted."""
    evil = {**MEMBERS, f"{TOP}/../../escaped.txt": b"gotcha"}
    zenodo.add_zenodo_file(RECORD, KEY, make_zip(evil))
    err = _checkpoints_fail(capsys)
    assert len(err) == 1 and "outside the target folder" in err[0] and "escaped.txt" in err[0]
    root = _release_root()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (root / "mc_maze_small").exists()
    assert not list(root.glob("*.extracted.json"))


def test_download_checkpoints_dry_run_lists_archive(zenodo, release_zip, capsys):
    """Verify that --dry-run prints the release_zip and its size and downloads nothing."""
    assert CHECKPOINTS_SCRIPT.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert KEY in out and f"{len(release_zip[0]):,}" in out and "nothing was downloaded" in out
    assert not zenodo.requests_to(release_zip[1])
    assert not _release_root().exists()


def test_download_checkpoints_names_missing_file(zenodo, capsys):
    """Verify that a record without the release_zip fails with one line listing its files."""
    zenodo.add_zenodo_file(RECORD, "other.zip", b"zz")
    err = _checkpoints_fail(capsys)
    assert len(err) == 1 and KEY in err[0] and "other.zip" in err[0]
