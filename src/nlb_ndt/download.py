"""Downloads that resume, verify and never leave a broken file (DANDI, Zenodo, nlb_tools).

Every file is streamed to `<final>.part`, resumed with an HTTP Range request when an
earlier attempt or run stopped part-way, checked against the size and digest that the
service publishes, and only then renamed into place (`os.replace`, atomic on one
filesystem). So a final path holds either a verified file or whatever was there before.

Endpoints are read when a function runs (never at import), for tests and mirrors:

    NLB_DANDI_API_URL    default https://api.dandiarchive.org/api
    NLB_ZENODO_API_URL   default https://zenodo.org/api
    NLB_EVAL_DATA_URL    default nlb_tools' public eval_data_test.h5 (a Git LFS media URL)

Retries: connection errors, timeouts, bodies that stop short and HTTP 5xx/408/429 are
retried with exponential back-off (NLB_DOWNLOAD_RETRIES attempts per request, default 5;
first pause NLB_DOWNLOAD_BACKOFF_S seconds, default 1, doubled each time, at most 60 s;
NLB_DOWNLOAD_TIMEOUT_S seconds connect/read timeout, default 60). Other 4xx answers and
digest mismatches stop at once with one line.

Files already present are re-hashed rather than trusted from a sidecar: hashing costs a
few seconds even for area2_bump's 1.8 GB train file, and it also catches files damaged
or swapped after download. The checkpoint archive is the exception: its extracted tree
is recorded in `<archive stem>.extracted.json` (the archive's md5 and every member's
size), so a re-run needs neither the zip nor a re-extraction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests
from tqdm import tqdm

from . import __version__
from .datasets import DATASET_NAMES, SYNTHETIC_MARKER, DatasetSpec, get_spec
from .paths import Paths, get_paths

logger = logging.getLogger(__name__)

DEFAULT_DANDI_API_URL = "https://api.dandiarchive.org/api"
DEFAULT_ZENODO_API_URL = "https://zenodo.org/api"
DEFAULT_EVAL_DATA_URL = ("https://media.githubusercontent.com/media/neurallatents/"
                         "nlb_tools/main/data/eval_data_test.h5")
#: nlb_tools' public test-split ground truth, a Git LFS object (nlb_facts.md §6).
EVAL_DATA_SHA256 = "f2f434d30193251b58e6a693381fdd185c8fbc0e47d38f8810e65295bc42c865"
EVAL_DATA_SIZE = 105_927_616  # bytes
#: AE Studio's released AESMTE3 checkpoints (nlb_facts.md §5).
CHECKPOINT_RECORD_ID = "5875246"
CHECKPOINT_FILE = "ae-nlb-2021-model-checkpoints.zip"
#: Marks a dandiset folder written by nlb_ndt.synthetic; real data must not mix with it.
# Small enough for a live progress bar and a short loss on a dropped connection,
# large enough that per-chunk Python overhead is negligible.
CHUNK_BYTES = 64 * 1024

_T = TypeVar("_T")


class DownloadError(RuntimeError):
    """A download that retrying now will not fix; the message is one line for the user."""


class UnreachableError(DownloadError):
    """A host that could not be reached (offline, name resolution, refused connection)."""


class UnsafeArchiveError(DownloadError):
    """A zip member that would land outside the target, or sizes beyond what is declared."""


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


def dandi_api_url() -> str:
    """Base URL of the DANDI REST API (NLB_DANDI_API_URL)."""
    return (os.environ.get("NLB_DANDI_API_URL") or DEFAULT_DANDI_API_URL).rstrip("/")


def zenodo_api_url() -> str:
    """Base URL of the Zenodo REST API (NLB_ZENODO_API_URL)."""
    return (os.environ.get("NLB_ZENODO_API_URL") or DEFAULT_ZENODO_API_URL).rstrip("/")


def eval_data_url() -> str:
    """URL of nlb_tools' eval_data_test.h5 (NLB_EVAL_DATA_URL)."""
    return os.environ.get("NLB_EVAL_DATA_URL") or DEFAULT_EVAL_DATA_URL


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


def _safe_relpath(name: str, *, source: str,
                  error: type[DownloadError] = UnsafeArchiveError) -> PurePosixPath:
    """`name` as a relative path that cannot escape its folder, or raise `error`."""
    norm = name.replace("\\", "/")
    path = PurePosixPath(norm)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or re.match(r"^[A-Za-z]:", norm) or ".." in parts or not parts:
        raise error(f"refusing {source}: path {name!r} would land outside the target folder "
                    "(absolute or containing '..')")
    return PurePosixPath(*parts)


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


# ---------------------------------------------------------------------------- DANDI


def list_dandi_assets(dandiset_id: str, version: str, *, session: requests.Session | None = None,
                      retry: RetryPolicy | None = None, page_size: int = 100,
                      hint: str = "") -> list[dict]:
    """All assets of one dandiset version, following the paginated list's `next` links.

    Each entry is the API's own dict: asset_id, blob, path, size (bytes), created, modified.
    """
    policy = retry or RetryPolicy.from_env()
    url: str | None = f"{dandi_api_url()}/dandisets/{dandiset_id}/versions/{version}/assets/"
    params: dict | None = {"page_size": page_size, "order": "path"}
    assets: list[dict] = []
    seen: set[str] = set()
    with _session(session) as s:
        while url:
            if url in seen:  # a server bug must not loop us forever
                raise DownloadError(f"DANDI asset list pagination loops at {_public(url)}")
            seen.add(url)
            page = _get_json(s, url, policy, params=params, hint=hint,
                             what=f"listing dandiset {dandiset_id} version {version}")
            assets.extend(page.get("results") or [])
            url, params = page.get("next"), None  # `next` already carries the query
    return assets


def dandi_asset_metadata(asset_id: str, *, session: requests.Session | None = None,
                         retry: RetryPolicy | None = None, hint: str = "") -> dict:
    """The asset's JSON-LD metadata (`GET /assets/{id}/`): path, contentSize, digest, ..."""
    with _session(session) as s:
        return _get_json(s, f"{dandi_api_url()}/assets/{asset_id}/",
                         retry or RetryPolicy.from_env(), hint=hint,
                         what=f"reading DANDI asset {asset_id}")


def _data_hint(data_raw: Path) -> str:
    return (f"to use files obtained elsewhere, put them under NLB_DATA_RAW (now {data_raw}) "
            "as <dandiset>/<subject>/<file>.nwb, or point NLB_DATA_RAW at the folder that "
            "holds them")


def _refuse_synthetic(folder: Path, what: str) -> None:
    marker = folder / SYNTHETIC_MARKER
    if marker.exists():
        raise DownloadError(f"{folder} holds the synthetic dataset ({marker.name} is there); "
                            f"refusing to put {what} into it; set NLB_DATA_RAW to another "
                            "folder or move the synthetic data away")


def dandi_files(spec: DatasetSpec, data_raw: Path, *, version: str = "pinned",
                session: requests.Session | None = None, retry: RetryPolicy | None = None,
                digests: bool = True) -> list[RemoteFile]:
    """The train and test files of `spec` in one dandiset version, resolved by path.

    Args:
        spec: the dataset.
        data_raw: NLB_DATA_RAW; files go to <data_raw>/<dandiset>/<DANDI path>.
        version: "pinned" (spec.version), "draft", or an explicit version id.
        digests: also read each asset's `dandi:sha2-256` (one request per file).
    """
    version_id = spec.version if version == "pinned" else version
    folder = data_raw / spec.dandiset_id
    _refuse_synthetic(folder, f"real {spec.name} data")
    hint = _data_hint(data_raw)
    with _session(session) as s:
        assets = {a.get("path"): a for a in list_dandi_assets(
            spec.dandiset_id, version_id, session=s, retry=retry, hint=hint)}
        files = []
        for rel, known in ((spec.train_file, spec.train_sha256),
                           (spec.test_file, spec.test_sha256)):
            asset = assets.get(rel)
            if asset is None:
                raise DownloadError(f"dandiset {spec.dandiset_id} version {version_id} has no "
                                    f"asset {rel!r} (it lists {len(assets)}); try --version "
                                    "draft or pinned")
            digest = None
            if digests:
                meta = dandi_asset_metadata(asset["asset_id"], session=s, retry=retry, hint=hint)
                digest = (meta.get("digest") or {}).get("dandi:sha2-256")
                # The table's digest is only a fallback for the pinned version.
                digest = digest or (known if version == "pinned" else None)
            dest = folder.joinpath(*_safe_relpath(rel, source=f"DANDI asset {rel!r}",
                                                  error=DownloadError).parts)
            files.append(RemoteFile(
                label=f"{spec.dandiset_id}/{rel}", dest=dest, size=asset.get("size"),
                url=f"{dandi_api_url()}/assets/{asset['asset_id']}/download/",
                digest=digest, algorithm="sha256", hint=hint))
    return files


def fetch_eval_data(*, paths: Paths | None = None, url: str | None = None,
                    sha256: str = EVAL_DATA_SHA256, size: int = EVAL_DATA_SIZE,
                    dry_run: bool = False, session: requests.Session | None = None,
                    retry: RetryPolicy | None = None) -> FileResult:
    """Fetch nlb_tools' public eval_data_test.h5 into paths.eval_data_test.

    Refuses when NLB_DATA_RAW holds the synthetic dataset, whose eval_data_test.h5 is
    synthetic ground truth, unless the file there is already the verified public one.
    """
    paths = paths or get_paths()
    dest = paths.eval_data_test
    remote = RemoteFile(label=dest.name, url=url or eval_data_url(), dest=dest, size=size,
                        digest=sha256, algorithm="sha256", hint=_data_hint(paths.data_raw))
    markers = sorted(paths.data_raw.glob(f"*/{SYNTHETIC_MARKER}"))
    if markers and not verify_file(dest, "sha256", sha256, size):
        _refuse_synthetic(markers[0].parent, "the public eval_data_test.h5 next to it")
    if dry_run:
        return _planned(remote)
    return FileResult(remote.label, dest, size, fetch_file(remote, session=session, retry=retry))


def download_data(datasets: Sequence[str] | None = None, *, version: str = "pinned",
                  eval_data: bool = False, dry_run: bool = False, paths: Paths | None = None,
                  session: requests.Session | None = None,
                  retry: RetryPolicy | None = None) -> list[FileResult]:
    """Fetch the NWB files of `datasets` (default: all seven) into NLB_DATA_RAW.

    Args:
        datasets: dataset names (validated before anything is fetched).
        version: "pinned" (the published versions in the dataset table) or "draft".
        eval_data: also fetch nlb_tools' eval_data_test.h5.
        dry_run: list files, sizes and local status; download nothing.
    """
    paths = paths or get_paths()
    specs = [get_spec(name) for name in (DATASET_NAMES if datasets is None else datasets)]
    policy = retry or RetryPolicy.from_env()
    logger.info("data folder (NLB_DATA_RAW): %s; DANDI API: %s", paths.data_raw,
                dandi_api_url())
    results: list[FileResult] = []
    with _session(session) as s:
        for spec in specs:
            for remote in dandi_files(spec, paths.data_raw, version=version, session=s,
                                      retry=policy, digests=not dry_run):
                results.append(_planned(remote) if dry_run else FileResult(
                    remote.label, remote.dest, remote.size,
                    fetch_file(remote, session=s, retry=policy)))
        if eval_data:
            results.append(fetch_eval_data(paths=paths, dry_run=dry_run, session=s,
                                           retry=policy))
    return results


# --------------------------------------------------------------------------- Zenodo


def list_zenodo_files(record_id: str, *, session: requests.Session | None = None,
                      retry: RetryPolicy | None = None, hint: str = "") -> list[dict]:
    """Entries of `GET /records/{id}/files`: {key, size, checksum "md5:<hex>", links}."""
    with _session(session) as s:
        data = _get_json(s, f"{zenodo_api_url()}/records/{record_id}/files",
                         retry or RetryPolicy.from_env(), hint=hint,
                         what=f"listing Zenodo record {record_id}")
    return list(data.get("entries") or [])


def _marker_ok(marker: Path, remote: RemoteFile, root: Path) -> bool:
    """Whether `marker` records an extraction of this very archive, still complete."""
    try:
        info = json.loads(marker.read_text())
        return (info["digest"] == remote.digest and info["algorithm"] == remote.algorithm
                and all((root / rel).is_file() and (root / rel).stat().st_size == size
                        for rel, size in info["files"].items()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def download_checkpoints(*, dry_run: bool = False, paths: Paths | None = None,
                         record_id: str = CHECKPOINT_RECORD_ID, key: str = CHECKPOINT_FILE,
                         session: requests.Session | None = None,
                         retry: RetryPolicy | None = None) -> list[FileResult]:
    """Fetch and extract AE Studio's checkpoint archive into SUBMISSION_VALIDATION_ROOT.

    The zip is kept next to the extracted tree (<root>/<dataset>/models.csv,
    <root>/<dataset>/<trial>.<lve|lfve>.pth). Skips everything when the extraction
    recorded in `<root>/<stem>.extracted.json` matches the record's md5 and is complete.
    """
    paths = paths or get_paths()
    root = paths.submission_validation_root
    policy = retry or RetryPolicy.from_env()
    hint = (f"to use an archive obtained elsewhere, extract it so that "
            f"SUBMISSION_VALIDATION_ROOT (now {root}) holds <dataset>/models.csv")
    logger.info("checkpoint folder (SUBMISSION_VALIDATION_ROOT): %s; Zenodo API: %s",
                root, zenodo_api_url())
    with _session(session) as s:
        entries = list_zenodo_files(record_id, session=s, retry=policy, hint=hint)
        entry = next((e for e in entries if e.get("key") == key), None)
        if entry is None:
            raise DownloadError(f"Zenodo record {record_id} has no file {key!r}; it lists: "
                                f"{', '.join(str(e.get('key')) for e in entries) or 'nothing'}")
        algorithm, _, digest = str(entry.get("checksum") or "").partition(":")
        name = _safe_relpath(key, source=f"Zenodo file {key!r}", error=DownloadError)
        remote = RemoteFile(
            label=f"zenodo/{record_id}/{key}", dest=root.joinpath(*name.parts),
            url=(entry.get("links") or {}).get("content")
            or f"{zenodo_api_url()}/records/{record_id}/files/{key}/content",
            size=entry.get("size"), digest=digest.lower() or None,
            algorithm=algorithm.lower() if digest else "md5", hint=hint)
        marker = root / f"{PurePosixPath(key).stem}.extracted.json"
        if _marker_ok(marker, remote, root):
            logger.info("%s: already extracted into %s (per %s)", key, root, marker.name)
            return [FileResult(remote.label, remote.dest, remote.size,
                               "present" if dry_run else "skipped")]
        if dry_run:
            return [_planned(remote)]
        status = fetch_file(remote, session=s, retry=policy)
    files = extract_zip(remote.dest, root)
    tmp = marker.with_name(marker.name + ".part")
    tmp.write_text(json.dumps({
        "archive": key, "algorithm": remote.algorithm, "digest": remote.digest,
        "files": {p.relative_to(root).as_posix(): p.stat().st_size for p in files}}, indent=1))
    os.replace(tmp, marker)
    logger.info("extracted %d files from %s into %s", len(files), key, root)
    return [FileResult(remote.label, remote.dest, remote.size, status)]


# ------------------------------------------------------------------------------ zip


def _member_present(target: Path, info: zipfile.ZipInfo) -> bool:
    if not target.is_file() or target.stat().st_size != info.file_size:
        return False
    crc = 0
    with open(target, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            crc = zlib.crc32(chunk, crc)
    return crc == info.CRC


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    source: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    written = 0
    try:
        with zf.open(info) as src, open(part, "wb") as dst:
            while chunk := src.read(CHUNK_BYTES):
                written += len(chunk)
                if written > info.file_size:  # zipfile stops at the declared size; belt and braces
                    raise UnsafeArchiveError(f"refusing {source}: member {info.filename!r} "
                                             f"inflates past its declared {info.file_size:,} bytes")
                dst.write(chunk)
        if written != info.file_size:
            raise DownloadError(f"{source} is damaged: member {info.filename!r} holds "
                                f"{written:,} of its declared {info.file_size:,} bytes")
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{source} is damaged: {info.filename!r}: {exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, target)


def extract_zip(zip_path: str | Path, dest_dir: str | Path, *,
                max_total_bytes: int | None = None) -> list[Path]:
    """Extract a zip into `dest_dir` without trusting its member names or sizes.

    Before writing anything, refuses members with absolute paths or `..`, and archives
    whose declared uncompressed total exceeds `max_total_bytes` (bytes) or the free disk
    space; while writing, refuses members that inflate past their declared size.
    `__MACOSX/` resource forks are skipped. A single top-level folder shared by all
    members is dropped (`top/mc_maze/models.csv` lands at `dest_dir/mc_maze/models.csv`).
    Each member is written to `<file>.part` and renamed once complete and CRC-checked;
    members already present with the same size and CRC-32 are left alone.

    Returns:
        The extracted file paths, in archive order.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    source = zip_path.name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"cannot open {zip_path} as a zip archive: {exc}") from None
    with zf:
        members = [(info, _safe_relpath(info.filename, source=source))
                   for info in zf.infolist() if not info.is_dir()]
        # macOS's zip adds resource forks under __MACOSX/; they are not content and would
        # hide the archive's single top-level folder.
        members = [(info, rel) for info, rel in members if rel.parts[0] != "__MACOSX"]
        tops = {rel.parts[0] for _, rel in members}
        if len(tops) == 1 and all(len(rel.parts) > 1 for _, rel in members):
            members = [(info, PurePosixPath(*rel.parts[1:])) for info, rel in members]
        declared = sum(info.file_size for info, _ in members)
        if max_total_bytes is not None and declared > max_total_bytes:
            raise UnsafeArchiveError(f"refusing {source}: it declares {declared:,} bytes "
                                     f"uncompressed, above the limit of {max_total_bytes:,}")
        targets = [(info, dest_dir.joinpath(*rel.parts)) for info, rel in members]
        todo = [(info, t) for info, t in targets if not _member_present(t, info)]
        dest_dir.mkdir(parents=True, exist_ok=True)
        need, free = sum(i.file_size for i, _ in todo), shutil.disk_usage(dest_dir).free
        if need > free:
            raise DownloadError(f"extracting {source} needs {need:,} bytes but {dest_dir} has "
                                f"{free:,} free")
        for info, target in tqdm(todo, desc=f"extract {source}", unit="file", disable=None):
            _extract_member(zf, info, target, source)
    return [t for _, t in targets]


# -------------------------------------------------------------------------- report


def _count(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


def format_results(results: Sequence[FileResult], *, dry_run: bool = False) -> str:
    """A table (label, bytes, status) and a summary line, for the scripts to print."""
    width = max((len(r.label) for r in results), default=0)
    lines = [f"{r.label:<{width}}  {'?' if r.size is None else f'{r.size:,}':>15}  {r.status}"
             for r in results]
    counts = Counter(r.status for r in results)
    if dry_run:
        todo = [r for r in results if r.status != "present"]
        lines.append(f"dry run: {_count(len(results))}, {len(todo)} to fetch "
                     f"({sum(r.size or 0 for r in todo):,} bytes); nothing was downloaded")
    else:
        total = sum(r.size or 0 for r in results if r.status == "downloaded")
        lines.append(f"done: {counts['downloaded']} downloaded ({total:,} bytes), "
                     f"{counts['skipped']} already present and verified")
    return "\n".join(lines)
