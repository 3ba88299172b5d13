"""The download engine's pieces that need no server: retry settings, back-off, verification.

(Streaming, resuming and retrying against a real HTTP server are tested in test_download.py.)
"""

from __future__ import annotations

import pytest

from nlb_ndt.data.download.http import DownloadError, RetryPolicy, public_url


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


def test_public_url_drops_query_and_fragment():
    """Verify that signed storage URLs are shown without their tokens."""
    assert public_url("https://h.org/a/b.nwb?X-Amz-Signature=abc#frag") == "https://h.org/a/b.nwb"
