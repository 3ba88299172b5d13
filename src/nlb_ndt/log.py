"""Logging set-up, called once by each script (library code only uses getLogger)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO, logfile: str | Path | None = None) -> None:
    """Configure the root logger: time, level, logger name, message; optionally a file."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile is not None:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile))
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S",
                        handlers=handlers, force=True)
