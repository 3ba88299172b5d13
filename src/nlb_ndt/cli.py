"""The shared shape of every script: parse, set up logging, call one function, exit code.

Errors reach the user as one line (`error: ...`) and exit code 1; `--debug` shows the
traceback instead. Ctrl-C exits with 130 and a one-line note.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from nlb_ndt.log import setup_logging


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments are reported like every other error: one line, then exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the common `--debug` and `--quiet` flags."""
    parser = _OneLineParser(
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (checked before any file is looked at)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
