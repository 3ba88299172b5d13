"""HTTP downloads that resume, retry, verify and never leave a broken file.

Every file is streamed to `<final>.part`, resumed with an HTTP Range request when an
earlier attempt or run stopped part-way, checked against the size and digest that the
service publishes, and only then renamed into place (`os.replace`, atomic on one
filesystem). So a final path holds either a verified file or whatever was there before.

Retries: connection errors, timeouts, bodies that stop short and HTTP 5xx/408/429 are
retried with exponential back-off (NLB_DOWNLOAD_RETRIES attempts per request, default 5;
first pause NLB_DOWNLOAD_BACKOFF_S seconds, default 1, doubled each time, at most 60 s;
NLB_DOWNLOAD_TIMEOUT_S seconds connect/read timeout, default 60). Other 4xx answers and
digest mismatches stop at once with one line.

Files already present are re-hashed rather than trusted from a sidecar: hashing costs a
few seconds even for area2_bump's 1.8 GB train file, and it also catches files damaged
or swapped after download.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from tqdm import tqdm

from . import __version__

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


class _BrokenTransfer(Exception):
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


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where from, where to, and what it must be.

    Attributes:
        label: name shown to the user, e.g. "000140/sub-Jenkins/...nwb".
        url: where to GET it (redirects are followed).
        dest: final local path.
        size: expected size in bytes (None if unpublished).
        digest: expected hex digest (None if unpublished: only the size is checked).
        algorithm: hashlib name of the digest ("sha256" or "md5").
        hint: what the user can do if the host cannot be reached.
    """

    label: str
    url: str
    dest: Path
    size: int | None
    digest: str | None
    algorithm: str = "sha256"
    hint: str = ""


@dataclass(frozen=True)
class FileResult:
    """What happened to one file. status: downloaded | skipped (already verified), or in
    a dry run present | partial (a .part exists) | missing."""

    label: str
    dest: Path
    size: int | None
    status: str


# ----------------------------------------------------------------------------- HTTP


@contextlib.contextmanager
def _session(session: requests.Session | None) -> Iterator[requests.Session]:
    if session is not None:
        yield session
        return
    with requests.Session() as own:
        own.headers["User-Agent"] = f"nlb_ndt/{__version__} python-requests"
        yield own


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _public(url: str) -> str:
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


def _describe(exc: BaseException) -> str:
    """A few words for a network error (requests' own messages run to several lines)."""
    if isinstance(exc, (_ServerBusy, _BrokenTransfer)):
        return str(exc)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    text = repr(exc)
    return next((reason for needle, reason in _REASONS if needle in text), type(exc).__name__)


def _get(session: requests.Session, url: str, policy: RetryPolicy, *,
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
        raise DownloadError(f"{_public(resp.url)} answered HTTP {code} {resp.reason or ''}".strip())
    return resp


def _with_retries(action: Callable[[], _T], *, what: str, url: str, policy: RetryPolicy,
                  hint: str = "", progress: Callable[[], int] | None = None) -> _T:
    """Run `action`, retrying transient failures with exponential back-off.

    `progress()` (e.g. the .part size) lets a failed attempt that moved forward start a
    fresh count, so a big file on a flaky link is not abandoned after a few drops.
    """
    transient = (_ServerBusy, _BrokenTransfer, requests.ConnectionError, requests.Timeout,
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
            logger.warning("%s: %s; retry %d of %d in %.2g s", what, _describe(exc),
                           failures, policy.attempts - 1, delay)
            time.sleep(delay)
    tries = f"after {failures} attempt{'s' if failures != 1 else ''}"
    if isinstance(last, _ServerBusy):
        raise DownloadError(f"{what}: {last.host} kept answering HTTP {last.status} {tries}; "
                            "try again later")
    if isinstance(last, _BrokenTransfer):
        raise DownloadError(f"{what}: the transfer kept breaking off ({last}) {tries}; "
                            "the partial file is kept and re-running resumes it")
    failed_url = getattr(getattr(last, "request", None), "url", None) or url
    advice = f"; {hint}" if hint else ""
    raise UnreachableError(f"{what}: cannot reach {_host(failed_url)} ({_describe(last)}) "
                           f"{tries}{advice}")


def _get_json(session: requests.Session, url: str, policy: RetryPolicy, *, what: str,
              hint: str, params: Mapping[str, object] | None = None) -> dict:
    def action() -> dict:
        with _get(session, url, policy, params=params) as resp:
            try:
                return resp.json()
            except ValueError:
                raise DownloadError(f"{_public(resp.url)} did not answer JSON") from None

    return _with_retries(action, what=what, url=url, policy=policy, hint=hint)


# ------------------------------------------------------------------ files on disk


def _hash_file(path: Path, algorithm: str, label: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh, tqdm(total=path.stat().st_size, desc=f"verify {label}",
                                      unit="B", unit_scale=True, unit_divisor=1024,
                                      leave=False, disable=None) as bar:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_file(path: str | Path, algorithm: str, digest: str | None,
                size: int | None = None, label: str | None = None) -> bool:
    """True if `path` is a file of `size` bytes (when given) whose digest is `digest`.

    With `digest=None` only the size is checked.
    """
    path = Path(path)
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return digest is None or _hash_file(path, algorithm, label or path.name) == digest.lower()


def _planned(remote: RemoteFile) -> FileResult:
    """Dry-run status from sizes alone (no hashing, no download)."""
    part = remote.dest.with_name(remote.dest.name + ".part")
    if remote.dest.is_file() and remote.size in (None, remote.dest.stat().st_size):
        status = "present"
    else:
        status = "partial" if part.is_file() else "missing"
    return FileResult(remote.label, remote.dest, remote.size, status)


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size) from a `Content-Range: bytes a-b/total` header."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        raise _BrokenTransfer(f"unreadable Content-Range {value!r}")
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _stream_once(session: requests.Session, remote: RemoteFile, part: Path,
                 policy: RetryPolicy, bar: tqdm) -> int:
    """One attempt: append the missing bytes to `part`; returns the offset it started at."""
    offset = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()
        offset = 0
    if offset and offset == remote.size:
        return offset  # complete already (an earlier run stopped before the rename)
    # identity: byte offsets must refer to the stored file, not a compressed transfer
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with _get(session, remote.url, policy, headers=headers, stream=True) as resp:
        if resp.status_code == 416:
            part.unlink(missing_ok=True)  # the server disowns our partial file: start over
            raise _BrokenTransfer("server refused to resume; starting again")
        if resp.status_code == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _BrokenTransfer(f"server resumed at byte {start}, not {offset}")
        else:  # a full body: the server ignored (or was not sent) the Range header
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if remote.size is not None and total is not None and total != remote.size:
            part.unlink(missing_ok=True)
            raise DownloadError(f"the server offers {total:,} bytes but {remote.size:,} "
                                "were published; refusing a different file")
        bar.reset(total=remote.size or total)
        bar.update(offset)
        with open(part, "ab" if offset else "wb") as fh:
            try:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise _BrokenTransfer(_describe(exc)) from exc
            fh.flush()
            os.fsync(fh.fileno())
    got = part.stat().st_size
    if remote.size is not None and got < remote.size:
        raise _BrokenTransfer(f"body ended at byte {got:,} of {remote.size:,}")
    if remote.size is not None and got > remote.size:
        part.unlink()
        raise DownloadError(f"received {got:,} bytes, more than the {remote.size:,} published")
    return offset


def fetch_file(remote: RemoteFile, *, session: requests.Session | None = None,
               retry: RetryPolicy | None = None) -> str:
    """Make `remote.dest` a verified copy of `remote`; returns "downloaded" or "skipped".

    Streams into `<dest>.part` (kept on failure or Ctrl-C, so the next call resumes it
    with a Range request), verifies size and digest, then renames it over `dest`. A
    digest mismatch removes the .part; if the bytes came from a resumed download, it is
    fetched once more from scratch (the partial may belong to another file version).

    Raises:
        UnreachableError: the host could not be reached after all retries.
        DownloadError: a permanent failure (HTTP 4xx, size or digest mismatch) or
            retries exhausted.
    """
    policy = retry or RetryPolicy.from_env()
    dest = remote.dest
    if dest.exists():
        if verify_file(dest, remote.algorithm, remote.digest, remote.size, remote.label):
            logger.info("%s: already present and verified", remote.label)
            return "skipped"
        logger.warning("%s exists but does not verify; it is replaced once a new download "
                       "verifies", dest)
    if remote.digest is None:
        logger.warning("%s: no digest published; checking its size only", remote.label)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    what = f"downloading {remote.label}"
    restarted = False
    with _session(session) as s, tqdm(total=remote.size, desc=remote.label, unit="B",
                                      unit_scale=True, unit_divisor=1024, disable=None) as bar:
        while True:
            offsets: list[int] = []

            def attempt() -> None:
                offsets.append(_stream_once(s, remote, part, policy, bar))

            _with_retries(attempt, what=what, url=remote.url, policy=policy, hint=remote.hint,
                          progress=lambda: part.stat().st_size if part.is_file() else 0)
            if remote.digest is None:
                break
            got = _hash_file(part, remote.algorithm, remote.label)
            if got == remote.digest.lower():
                break
            part.unlink()
            if any(offsets) and not restarted:
                logger.warning("%s: %s mismatch after resuming; downloading it again from the "
                               "start", remote.label, remote.algorithm)
                restarted = True
                continue
            raise DownloadError(f"{what}: {remote.algorithm} mismatch (expected "
                                f"{remote.digest[:16]}..., got {got[:16]}...); the download was "
                                "removed; the server's copy or its published digest is wrong")
    os.replace(part, dest)
    logger.info("%s: downloaded and verified -> %s", remote.label, dest)
    return "downloaded"
