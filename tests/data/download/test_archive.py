"""Safe zip extraction: members outside the target, zip bombs, damaged members, layouts."""

from __future__ import annotations

import struct

import pytest
from helpers import make_zip

from nlb_ndt.data.download import archive

TOP = "ae-nlb-2021-model-checkpoints"





def test_extract_zip_refuses_absolute_member(tmp_path):
    """Verify that an absolute member path is refused and nothing is written."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip({"ok/x.txt": b"1", "/etc/evil": b"2"}))
    with pytest.raises(archive.UnsafeArchiveError, match="/etc/evil"):
        archive.extract_zip(zpath, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_zip_refuses_declared_size_above_limit(tmp_path):
    """Verify that an archive declaring more uncompressed bytes than the limit is refused."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip({"big.bin": b"\0" * 100_000}))
    with pytest.raises(archive.UnsafeArchiveError, match="100,000"):
        archive.extract_zip(zpath, tmp_path / "out", max_total_bytes=50_000)
    assert not (tmp_path / "out").exists()


def test_extract_zip_rejects_member_bigger_than_declared(tmp_path):
    """Verify that a member whose real size exceeds its declared size leaves no file behind."""
    raw = bytearray(make_zip({"top/data.bin": b"\0" * 10_000}))
    central = raw.find(b"PK\x01\x02")
    raw[central + 24: central + 28] = struct.pack("<I", 100)  # declared uncompressed size
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(bytes(raw))
    with pytest.raises(archive.DownloadError, match="damaged"):
        archive.extract_zip(zpath, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("data.bin*"))


def test_extract_zip_keeps_layout_without_single_top_folder(tmp_path):
    """Verify that members are not moved up when the archive has several top-level entries."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip({"mc_rtt/models.csv": b"a", "mc_maze/models.csv": b"b"}))
    files = archive.extract_zip(zpath, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == [
        "mc_rtt/models.csv", "mc_maze/models.csv"]
    assert (tmp_path / "out/mc_maze/models.csv").read_bytes() == b"b"


def test_extract_zip_ignores_macos_resource_forks(tmp_path):
    """Verify that __MACOSX/ entries are skipped and do not stop the top folder being dropped."""
    zpath = tmp_path / "a.zip"
    zpath.write_bytes(make_zip({f"{TOP}/mc_rtt/models.csv": b"a",
                            f"__MACOSX/{TOP}/mc_rtt/._models.csv": b"fork"}))
    files = archive.extract_zip(zpath, tmp_path / "out")
    assert files == [tmp_path / "out/mc_rtt/models.csv"]
    assert not (tmp_path / "out/__MACOSX").exists()
