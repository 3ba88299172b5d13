"""The download engine's pieces that need no server: retry settings, back-off, verification.

(Streaming, resuming and retrying against a real HTTP server are tested in test_download.py.)
"""

from __future__ import annotations

import hashlib

import pytest

from nlb_ndt.fetch import DownloadError, RetryPolicy, verify_file


def test_retry_policy_from_env_reads_numbers_and_defaults():
    """Verify the defaults, parsed values, and that attempts never drop below one."""
    assert RetryPolicy.from_env({}) == RetryPolicy(attempts=5, backoff_s=1.0, timeout_s=60.0)
    policy = RetryPolicy.from_env({"NLB_DOWNLOAD_RETRIES": "3", "NLB_DOWNLOAD_BACKOFF_S": "0.5",
                                   "NLB_DOWNLOAD_TIMEOUT_S": "12"})
    assert (policy.attempts, policy.backoff_s, policy.timeout_s) == (3, 0.5, 12.0)
    assert isinstance(policy.attempts, int)
    assert RetryPolicy.from_env({"NLB_DOWNLOAD_RETRIES": "0"}).attempts == 1
    assert RetryPolicy.from_env({"NLB_DOWNLOAD_RETRIES": ""}).attempts == 5  # empty = unset


def test_retry_policy_from_env_names_a_bad_value():
    """Verify that a non-number is a DownloadError naming the variable and the value."""
    with pytest.raises(DownloadError, match="NLB_DOWNLOAD_BACKOFF_S must be a number, got 'fast'"):
        RetryPolicy.from_env({"NLB_DOWNLOAD_BACKOFF_S": "fast"})


def test_delay_doubles_and_is_capped():
    """Verify back-off b, 2b, 4b, ... after each failure, never above max_backoff_s."""
    policy = RetryPolicy(backoff_s=1.5, max_backoff_s=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.5, 3.0, 6.0, 10.0, 10.0]
    assert RetryPolicy().delay(20) == 60.0


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
