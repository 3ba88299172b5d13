"""Transfers: verified files and the dry-run status of a file from sizes alone."""

from __future__ import annotations

import hashlib

from nlb_ndt.data.download.transfer import RemoteFile, planned_result, verify_file


def test_verify_file_checks_size_and_digest(tmp_path):
    """Verify True for the right size and digest (either case), False for a wrong digest,
    a wrong size or a missing file; with no digest only the size counts."""
    path = tmp_path / "f.bin"
    data = b"neural latents" * 100
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()
    assert verify_file(path, "sha256", sha, size=len(data))
    assert verify_file(path, "sha256", sha.upper())
    assert verify_file(path, "md5", md5, size=len(data))
    assert not verify_file(path, "sha256", hashlib.sha256(b"other").hexdigest())
    assert not verify_file(path, "sha256", sha, size=len(data) + 1)
    assert not verify_file(tmp_path / "missing.bin", "sha256", sha)
    assert verify_file(path, "sha256", None, size=len(data))
    assert not verify_file(path, "sha256", None, size=1)


def test_planned_result_reads_sizes_only(tmp_path):
    """Verify the dry-run status: present (right size), partial (a .part), missing."""
    dest = tmp_path / "f.nwb"
    remote = RemoteFile("f.nwb", "http://127.0.0.1/f.nwb", dest, size=4, digest=None)
    assert planned_result(remote).status == "missing"
    (tmp_path / "f.nwb.part").write_bytes(b"ab")
    assert planned_result(remote).status == "partial"
    dest.write_bytes(b"abcd")
    assert planned_result(remote).status == "present"
