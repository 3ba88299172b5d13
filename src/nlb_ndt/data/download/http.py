"""HTTP requests that retry: sessions, GETs, JSON answers, and one-line errors.

Retries: connection errors, timeouts, bodies that stop short and HTTP 5xx/408/429 are
retried with exponential back-off (NLB_DOWNLOAD_RETRIES attempts per request, default 5;
first pause NLB_DOWNLOAD_BACKOFF_S seconds, default 1, doubled each time, at most 60 s;
NLB_DOWNLOAD_TIMEOUT_S seconds connect/read timeout, default 60). Other 4xx answers and
digest mismatches stop at once with one line.

Files are fetched by nlb_ndt.data.download.transfer on top of these requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests

from nlb_ndt import __version__

logger = logging.getLogger(__name__)

# Small enough for a live progress bar and a short loss on a dropped connection,
# large enough that per-chunk Python overhead is negligible.
CHUNK_BYTES = 64 * 1024

_T = TypeVar("_T")


class DownloadError(RuntimeError):
    """A download that retrying now will not fix; the message is one line for the user."""


class UnreachableError(DownloadError):
    """A host that could not be reached (offline, name resolution, refused connection)."""


class _ServerBusy(Exception):
    """HTTP 5xx/408/429: the server may answer properly later."""

    def __init__(self, status: int, url: str):
        super().__init__(f"HTTP {status}")
        self.status, self.host = status, _host(url)


class BrokenTransfer(Exception):
    """The body stopped before its end (dropped connection, short body, stalled read)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts per request, back-off and timeouts (seconds)."""

    attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        """Read NLB_DOWNLOAD_RETRIES / _BACKOFF_S / _TIMEOUT_S (defaults where unset)."""
        env = os.environ if env is None else env

        def number(var: str, default: float) -> float:
            raw = env.get(var)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise DownloadError(f"{var} must be a number, got {raw!r}") from None

        return cls(attempts=max(1, int(number("NLB_DOWNLOAD_RETRIES", cls.attempts))),
                   backoff_s=number("NLB_DOWNLOAD_BACKOFF_S", cls.backoff_s),
                   timeout_s=number("NLB_DOWNLOAD_TIMEOUT_S", cls.timeout_s))

    def delay(self, attempt: int) -> float:
        """Pause in seconds after failed attempt number `attempt` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


# ----------------------------------------------------------------------------- HTTP


@contextlib.contextmanager
def open_session(session: requests.Session | None) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    with requests.Session() as own:
        own.headers["User-Agent"] = f"nlb_ndt/{__version__} python-requests"
        yield own


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def public_url(url: str) -> str:
    """The URL without query or fragment: signed storage URLs carry tokens."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


_REASONS = (("Connection refused", "connection refused"),
            ("NameResolutionError", "name resolution failed"),
            ("Name or service not known", "name resolution failed"),
            ("Temporary failure in name resolution", "name resolution failed"),
            ("Connection reset", "connection reset"),
            ("RemoteDisconnected", "connection closed by the server"),
            ("IncompleteRead", "body ended early"),
            ("timed out", "timed out"))


def describe_error(exc: BaseException) -> str:
    """A few words for a network error (requests' own messages run to several lines)."""
    if isinstance(exc, (_ServerBusy, BrokenTransfer)):
        return str(exc)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = repr(exc)
    return next((reason for needle, reason in _REASONS if needle in text), type(exc).__name__)


def get(session: requests.Session, url: str, policy: RetryPolicy, *,
         params: Mapping[str, object] | None = None, headers: Mapping[str, str] | None = None,
         stream: bool = False) -> requests.Response:
    """GET following redirects; 5xx/408/429 -> _ServerBusy, other 4xx (but 416) -> DownloadError."""
    resp = session.get(url, params=params, headers=headers, stream=stream,
                       timeout=policy.timeout_s)
    code = resp.status_code
    if code >= 500 or code in (408, 429):
        resp.close()
        raise _ServerBusy(code, resp.url)
    if code >= 400 and code != 416:
        resp.close()
        raise DownloadError(
            f"{public_url(resp.url)} answered HTTP {code} {resp.reason or ''}".strip())
    return resp


def with_retries(action: Callable[[], _T], *, what: str, url: str, policy: RetryPolicy,
                  hint: str = "", progress: Callable[[], int] | None = None) -> _T:
    """Run `action`, retrying transient failures with exponential back-off.

    `progress()` (e.g. the .part size) lets a failed attempt that moved forward start a
    fresh count, so a big file on a flaky link is not abandoned after a few drops.
    """
    transient = (_ServerBusy, BrokenTransfer, requests.ConnectionError, requests.Timeout,
                 requests.exceptions.ChunkedEncodingError)
    failures, mark = 0, progress() if progress else 0
    while True:
        try:
            return action()
        except DownloadError as exc:
            raise type(exc)(f"{what}: {exc}") from None
        except transient as exc:
            last: BaseException = exc
            now = progress() if progress else 0
            failures, mark = (1 if now > mark else failures + 1), now
            if failures >= policy.attempts:
                break
            delay = policy.delay(failures)
            logger.warning("%s: %s; retry %d of %d in %.2g s", what, describe_error(exc),
                           failures, policy.attempts - 1, delay)
            time.sleep(delay)
    tries = f"after {failures} attempt{'s' if failures != 1 else ''}"
    if isinstance(last, _ServerBusy):
        raise DownloadError(f"{what}: {last.host} kept answering HTTP {last.status} {tries}; "
                            "try again later")
    if isinstance(last, BrokenTransfer):
        raise DownloadError(f"{what}: the transfer kept breaking off ({last}) {tries}; "
                            "the partial file is kept and re-running resumes it")
    failed_url = getattr(getattr(last, "request", None), "url", None) or url
    advice = f"; {hint}" if hint else ""
    raise UnreachableError(f"{what}: cannot reach {_host(failed_url)} ({describe_error(last)}) "
                           f"{tries}{advice}")


def get_json(session: requests.Session, url: str, policy: RetryPolicy, *, what: str,
              hint: str, params: Mapping[str, object] | None = None) -> dict:
    def action() -> dict:
        with get(session, url, policy, params=params) as resp:
            try:
                return resp.json()
            except ValueError:
                raise DownloadError(f"{public_url(resp.url)} did not answer JSON") from None

    return with_retries(action, what=what, url=url, policy=policy, hint=hint)
