"""download_checkpoints.py and nlb_ndt.download's Zenodo and zip side, against a local server."""

from __future__ import annotations

import io
import random
import struct
import zipfile
from pathlib import Path

import pytest
from fake_services import FakeServices, drop, fail
from helpers import isolated_download_env, load_script

from nlb_ndt import download
from nlb_ndt.paths import get_paths

REPO = Path(__file__).resolve().parents[1]
RECORD, KEY = download.CHECKPOINT_RECORD_ID, download.CHECKPOINT_FILE
TOP = "ae-nlb-2021-model-checkpoints"
_RNG = random.Random(0)
MEMBERS = {
    f"{TOP}/README.md": b"AE Studio checkpoints (fake)\n",
    f"{TOP}/mc_maze_small/models.csv": b",trial_id,val_ckpt,co-bps\n0,0a1b2c3d,lve,0.35\n",
    f"{TOP}/mc_maze_small/0a1b2c3d.lve.pth": _RNG.randbytes(150_000),
    f"{TOP}/mc_rtt/models.csv": b",trial_id,val_ckpt,co-bps\n0,deadbeef,lfve,0.19\n",
    f"{TOP}/mc_rtt/deadbeef.lfve.pth": _RNG.randbytes(50_000),
}



SCRIPT = load_script("download_checkpoints")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()



@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A started FakeServices with the Zenodo endpoint and path variables pointed at it."""
    isolated_download_env(monkeypatch, tmp_path / "home")
    with FakeServices() as services:
        monkeypatch.setenv("NLB_ZENODO_API_URL", services.zenodo_api_url)
        yield services


@pytest.fixture
def archive(fake) -> tuple[bytes, str]:
    """The served checkpoint zip and its content path."""
    data = _zip(MEMBERS)
    return data, fake.add_zenodo_file(RECORD, KEY, data)


def _root() -> Path:
    return get_paths().submission_validation_root


def _fails(capsys, *args: str) -> list[str]:
    assert SCRIPT.main(["--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and sum(e.startswith("error: ") for e in err) == 1
    assert "Traceback" not in "\n".join(err)
    return err


def test_download_checkpoints_extracts_into_dataset_layout(fake, archive, capsys):
    """Verify that the archive is fetched from links.content, verified, kept, and extracted
    with its top folder dropped: <root>/<dataset>/models.csv and <trial>.<ckpt>.pth."""
    data, content = archive
    assert SCRIPT.main([]) == 0
    root = _root()
    for name, member in MEMBERS.items():
        assert (root / name.removeprefix(f"{TOP}/")).read_bytes() == member
    assert (root / KEY).read_bytes() == data
    assert not (root / TOP).exists()
    assert fake.ranges(content) == [None]
    assert not list(root.rglob("*.part"))
    assert "done: 1 downloaded" in capsys.readouterr().out


def test_download_checkpoints_skips_complete_extraction(fake, archive, capsys):
    """Verify that a second run fetches nothing and reports the archive as present."""
    assert SCRIPT.main([]) == 0
    assert SCRIPT.main([]) == 0
    assert len(fake.requests_to(archive[1])) == 1
    assert "1 already present and verified" in capsys.readouterr().out.splitlines()[-1]


def test_download_checkpoints_restores_missing_member_from_kept_zip(fake, archive):
    """Verify that a deleted extracted file is restored from the verified zip, unchanged files
    are left alone, and nothing is downloaded again."""
    assert SCRIPT.main([]) == 0
    root = _root()
    ckpt, csv = root / "mc_maze_small/0a1b2c3d.lve.pth", root / "mc_rtt/models.csv"
    ckpt.unlink()
    before = csv.stat().st_mtime_ns
    assert SCRIPT.main([]) == 0
    assert ckpt.read_bytes() == MEMBERS[f"{TOP}/mc_maze_small/0a1b2c3d.lve.pth"]
    assert csv.stat().st_mtime_ns == before
    assert len(fake.requests_to(archive[1])) == 1


def test_download_checkpoints_resumes_after_drop_and_server_errors(fake, archive):
    """Verify that 503, a dropped connection and 500 are ridden out to a verified archive."""
    data, content = archive
    fake.inject(content, fail(503), drop(at=0.7), fail(500))
    assert SCRIPT.main([]) == 0
    ranges = fake.ranges(content)
    assert ranges[:2] == [None, None] and len(ranges) == 4
    assert 0 < int(ranges[3].removeprefix("bytes=").rstrip("-")) < len(data)
    assert (_root() / KEY).read_bytes() == data


def test_download_checkpoints_md5_mismatch_fails_cleanly(fake, capsys):
    """Verify that an md5 mismatch stops with one line, leaving no zip and no extraction."""
    fake.add_zenodo_file(RECORD, KEY, _zip(MEMBERS), md5="0" * 32)
    err = _fails(capsys)
    assert len(err) == 1 and "md5 mismatch" in err[0]
    root = _root()
    assert not (root / KEY).exists() and not (root / "mc_maze_small").exists()


def test_download_checkpoints_refuses_parent_member(fake, tmp_path, capsys):
    """Verify that a zip with a `../` member is refused before anything is extracted."""
    evil = {**MEMBERS, f"{TOP}/../../escaped.txt": b"gotcha"}
    fake.add_zenodo_file(RECORD, KEY, _zip(evil))
    err = _fails(capsys)
    assert len(err) == 1 and "outside the target folder" in err[0] and "escaped.txt" in err[0]
    root = _root()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (root / "mc_maze_small").exists()
    assert not list(root.glob("*.extracted.json"))


def test_download_checkpoints_dry_run_lists_archive(fake, archive, capsys):
    """Verify that --dry-run prints the archive and its size and downloads nothing."""
    assert SCRIPT.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert KEY in out and f"{len(archive[0]):,}" in out and "nothing was downloaded" in out
    assert not fake.requests_to(archive[1])
    assert not _root().exists()


def test_download_checkpoints_names_missing_file(fake, capsys):
    """Verify that a record without the archive fails with one line listing its files."""
    fake.add_zenodo_file(RECORD, "other.zip", b"zz")
    err = _fails(capsys)
    assert len(err) == 1 and KEY in err[0] and "other.zip" in err[0]


def test_extract_zip_refuses_absolute_member(tmp_path):
    """Verify that an absolute member path is refused and nothing is written."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({"ok/x.txt": b"1", "/etc/evil": b"2"}))
    with pytest.raises(download.UnsafeArchiveError, match="/etc/evil"):
        download.extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_zip_refuses_declared_size_above_limit(tmp_path):
    """Verify that an archive declaring more uncompressed bytes than the limit is refused."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({"big.bin": b"\0" * 100_000}))
    with pytest.raises(download.UnsafeArchiveError, match="100,000"):
        download.extract_zip(zpath, tmp_path / "out", max_total_bytes=50_000)
    assert not (tmp_path / "out").exists()


def test_extract_zip_rejects_member_bigger_than_declared(tmp_path):
    """Verify that a member whose real size exceeds its declared size leaves no file behind."""
    raw = bytearray(_zip({"top/data.bin": b"\0" * 10_000}))
    central = raw.find(b"PK\x01\x02")
    raw[central + 24: central + 28] = struct.pack("<I", 100)  # declared uncompressed size
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(bytes(raw))
    with pytest.raises(download.DownloadError, match="damaged"):
        download.extract_zip(zpath, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("data.bin*"))


def test_extract_zip_keeps_layout_without_single_top_folder(tmp_path):
    """Verify that members are not moved up when the archive has several top-level entries."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({"mc_rtt/models.csv": b"a", "mc_maze/models.csv": b"b"}))
    files = download.extract_zip(zpath, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == [
        "mc_rtt/models.csv", "mc_maze/models.csv"]
    assert (tmp_path / "out/mc_maze/models.csv").read_bytes() == b"b"


def test_extract_zip_ignores_macos_resource_forks(tmp_path):
    """Verify that __MACOSX/ entries are skipped and do not stop the top folder being dropped."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(_zip({f"{TOP}/mc_rtt/models.csv": b"a",
                            f"__MACOSX/{TOP}/mc_rtt/._models.csv": b"fork"}))
    files = download.extract_zip(zpath, tmp_path / "out")
    assert files == [tmp_path / "out/mc_rtt/models.csv"]
    assert not (tmp_path / "out/__MACOSX").exists()
