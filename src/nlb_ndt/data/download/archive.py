"""Safe extraction of a downloaded zip archive (the released AESMTE3 checkpoints).

Archives come from the internet, so no member may land outside the target folder
(absolute paths, drive letters or '..' are refused before anything is written), declared
sizes are checked against the free disk and against what each member really holds (a zip
bomb stops at its declared size), and each member is written to a temporary name, checked
against its CRC, then renamed into place. Members already present at their size are
skipped, so an interrupted extraction continues.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from nlb_ndt.data.download.http import CHUNK_BYTES, DownloadError

logger = logging.getLogger(__name__)


class UnsafeArchiveError(DownloadError):
    """A zip member that would land outside the target, or sizes beyond what is declared."""


def safe_relpath(name: str, *, source: str,
                  error: type[DownloadError] = UnsafeArchiveError) -> PurePosixPath:
    """`name` as a relative path that cannot escape its folder, or raise `error`."""
    norm = name.replace("\\", "/")
    path = PurePosixPath(norm)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or re.match(r"^[A-Za-z]:", norm) or ".." in parts or not parts:
        raise error(f"refusing {source}: path {name!r} would land outside the target folder "
                    "(absolute or containing '..')")
    return PurePosixPath(*parts)




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
        members = [(info, safe_relpath(info.filename, source=source))
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


