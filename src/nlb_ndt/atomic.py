"""Write a file so that readers see the old version or the complete new one, never half.

Every file this package writes (caches, snapshots, rankings, submissions, configs, JSON
records, plots) goes through `atomic_write`: the writer fills a hidden temporary file beside
the target, and one rename puts it in place. A crash leaves the old file untouched and no
temporary file behind. Downloads are the exception: their `.part` files are kept on
purpose, so that the next run resumes them (nlb_ndt.data.download.sources).

The writes are also durable: the temporary file is flushed to disk (fsync) before the
rename, and the folder before and after it, so that after a power cut the name points at
the complete old file or the complete new one, never at an empty file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`.

    Args:
        path: the file to (re)place; its folder is created if needed.
        suffix: appended to the temporary name, for writers that infer the format from it
            (e.g. ".png" for matplotlib).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hidden (a leading dot): globs such as NWBDataset's "*.nwb" never see it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    tmp.unlink(missing_ok=True)  # some writers refuse to open an existing file
    try:
        yield tmp
        fsync_path(tmp)
        fsync_path(path.parent)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's contents and metadata to disk.

    Some file systems refuse fsync on a folder (EINVAL); their renames are then as durable
    as they can be made, so that refusal is ignored.
    """
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """`path.write_text(text)`, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)
