"""File transfers that resume, verify and never leave a broken file.

Every file is streamed to `<final>.part`, resumed with an HTTP Range request when an
earlier attempt or run stopped part-way, checked against the size and digest that the
service publishes, and only then renamed into place (`os.replace`, atomic on one
filesystem). So a final path holds either a verified file or whatever was there before.
Requests and their retries are nlb_ndt.data.download.http's.

Files already present are re-hashed rather than trusted from a sidecar: hashing costs a
few seconds even for area2_bump's 1.8 GB train file, and it also catches files damaged
or swapped after download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from nlb_ndt.data.download.http import (
    CHUNK_BYTES,
    BrokenTransfer,
    DownloadError,
    RetryPolicy,
    describe_error,
    get,
    open_session,
    with_retries,
)

logger = logging.getLogger(__name__)


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


def planned_result(remote: RemoteFile) -> FileResult:
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
        raise BrokenTransfer(f"unreadable Content-Range {value!r}")
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
    with get(session, remote.url, policy, headers=headers, stream=True) as resp:
        if resp.status_code == 416:
            part.unlink(missing_ok=True)  # the server disowns our partial file: start over
            raise BrokenTransfer("server refused to resume; starting again")
        if resp.status_code == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise BrokenTransfer(f"server resumed at byte {start}, not {offset}")
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
                raise BrokenTransfer(describe_error(exc)) from exc
            fh.flush()
            os.fsync(fh.fileno())
    got = part.stat().st_size
    if remote.size is not None and got < remote.size:
        raise BrokenTransfer(f"body ended at byte {got:,} of {remote.size:,}")
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
    with open_session(session) as s, tqdm(total=remote.size, desc=remote.label, unit="B",
                                      unit_scale=True, unit_divisor=1024, disable=None) as bar:
        while True:
            offsets: list[int] = []

            def attempt() -> None:
                offsets.append(_stream_once(s, remote, part, policy, bar))

            with_retries(attempt, what=what, url=remote.url, policy=policy, hint=remote.hint,
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
