"""The NLB data from DANDI, the released checkpoints from Zenodo, and the eval data.

Endpoints are read when a function runs (never at import), for tests and mirrors:

    NLB_DANDI_API_URL    default https://api.dandiarchive.org/api
    NLB_ZENODO_API_URL   default https://zenodo.org/api
    NLB_EVAL_DATA_URL    default nlb_tools' public eval_data_test.h5 (a Git LFS media URL)

Transfers go through nlb_ndt.data.download.transfer (resume, retries, digests) and the
checkpoint archive through nlb_ndt.data.download.archive (safe extraction). Its extracted
tree is recorded in `<archive stem>.extracted.json` (the archive's md5 and every member's
size), so a re-run needs neither the zip nor a re-extraction.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Sequence

import requests

from nlb_ndt.data.download.archive import extract_zip, safe_relpath
from nlb_ndt.data.download.http import (
    DownloadError,
    RetryPolicy,
    get_json,
    open_session,
    public_url,
)
from nlb_ndt.data.download.transfer import (
    FileResult,
    RemoteFile,
    fetch_file,
    planned_result,
    verify_file,
)
from nlb_ndt.datasets import DATASET_NAMES, SYNTHETIC_MARKER, DatasetSpec, get_spec
from nlb_ndt.paths import Paths, get_paths

logger = logging.getLogger(__name__)

DEFAULT_DANDI_API_URL = "https://api.dandiarchive.org/api"
DEFAULT_ZENODO_API_URL = "https://zenodo.org/api"
DEFAULT_EVAL_DATA_URL = ("https://media.githubusercontent.com/media/neurallatents/"
                         "nlb_tools/main/data/eval_data_test.h5")
#: nlb_tools' public test-split ground truth, a Git LFS object.
EVAL_DATA_SHA256 = "f2f434d30193251b58e6a693381fdd185c8fbc0e47d38f8810e65295bc42c865"
EVAL_DATA_SIZE = 105_927_616  # bytes
#: AE Studio's released AESMTE3 checkpoints.
CHECKPOINT_RECORD_ID = "5875246"
CHECKPOINT_FILE = "ae-nlb-2021-model-checkpoints.zip"


def dandi_api_url() -> str:
    """Base URL of the DANDI REST API (NLB_DANDI_API_URL)."""
    return (os.environ.get("NLB_DANDI_API_URL") or DEFAULT_DANDI_API_URL).rstrip("/")


def zenodo_api_url() -> str:
    """Base URL of the Zenodo REST API (NLB_ZENODO_API_URL)."""
    return (os.environ.get("NLB_ZENODO_API_URL") or DEFAULT_ZENODO_API_URL).rstrip("/")


def eval_data_url() -> str:
    """URL of nlb_tools' eval_data_test.h5 (NLB_EVAL_DATA_URL)."""
    return os.environ.get("NLB_EVAL_DATA_URL") or DEFAULT_EVAL_DATA_URL


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
    with open_session(session) as s:
        while url:
            if url in seen:  # a server bug must not loop us forever
                raise DownloadError(f"DANDI asset list pagination loops at {public_url(url)}")
            seen.add(url)
            page = get_json(s, url, policy, params=params, hint=hint,
                             what=f"listing dandiset {dandiset_id} version {version}")
            assets.extend(page.get("results") or [])
            url, params = page.get("next"), None  # `next` already carries the query
    return assets


def dandi_asset_metadata(asset_id: str, *, session: requests.Session | None = None,
                         retry: RetryPolicy | None = None, hint: str = "") -> dict:
    """The asset's JSON-LD metadata (`GET /assets/{id}/`): path, contentSize, digest, ..."""
    with open_session(session) as s:
        return get_json(s, f"{dandi_api_url()}/assets/{asset_id}/",
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
    with open_session(session) as s:
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
            dest = folder.joinpath(*safe_relpath(rel, source=f"DANDI asset {rel!r}",
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
        return planned_result(remote)
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
    with open_session(session) as s:
        for spec in specs:
            for remote in dandi_files(spec, paths.data_raw, version=version, session=s,
                                      retry=policy, digests=not dry_run):
                results.append(planned_result(remote) if dry_run else FileResult(
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
    with open_session(session) as s:
        data = get_json(s, f"{zenodo_api_url()}/records/{record_id}/files",
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
    with open_session(session) as s:
        entries = list_zenodo_files(record_id, session=s, retry=policy, hint=hint)
        entry = next((e for e in entries if e.get("key") == key), None)
        if entry is None:
            raise DownloadError(f"Zenodo record {record_id} has no file {key!r}; it lists: "
                                f"{', '.join(str(e.get('key')) for e in entries) or 'nothing'}")
        algorithm, _, digest = str(entry.get("checksum") or "").partition(":")
        name = safe_relpath(key, source=f"Zenodo file {key!r}", error=DownloadError)
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
            return [planned_result(remote)]
        status = fetch_file(remote, session=s, retry=policy)
    files = extract_zip(remote.dest, root)
    tmp = marker.with_name(marker.name + ".part")
    tmp.write_text(json.dumps({
        "archive": key, "algorithm": remote.algorithm, "digest": remote.digest,
        "files": {p.relative_to(root).as_posix(): p.stat().st_size for p in files}}, indent=1))
    os.replace(tmp, marker)
    logger.info("extracted %d files from %s into %s", len(files), key, root)
    return [FileResult(remote.label, remote.dest, remote.size, status)]


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

