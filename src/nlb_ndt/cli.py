"""The shared shape of every script: parse, set up logging, call one function, exit code.

Errors reach the user as one line (`error: ...`) and exit code 1; `--debug` shows the
traceback instead. Ctrl-C exits with 130 and a one-line note.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .log import setup_logging


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the common `--debug` and `--quiet` flags."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def run(parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, configure logging, run `body(args)` and turn failures into one line."""
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    setup_logging(level)
    try:
        code = body(args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if code is None else int(code)
