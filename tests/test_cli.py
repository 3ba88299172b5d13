"""The shared script shape: errors as one line and exit 1, --debug, Ctrl-C, exit codes."""

from __future__ import annotations

import logging

import pytest

from nlb_ndt.cli import make_parser, run


def _parser():
    parser = make_parser("an example script")
    parser.add_argument("--value", type=int, default=2)
    return parser


def test_error_becomes_one_line_and_exit_1(capsys):
    """Verify that an exception is printed as `error: <message>` only, with exit code 1."""
    def body(args):
        raise ValueError("the file is bad\n")

    assert run(_parser(), body, []) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: the file is bad" and "Traceback" not in err


def test_debug_reraises_and_sets_debug_logging():
    """Verify that --debug lets the exception through (full traceback) and logs at DEBUG."""
    levels = []

    def body(args):
        levels.append(logging.getLogger().level)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run(_parser(), body, ["--debug"])
    assert levels == [logging.DEBUG]


def test_keyboard_interrupt_exits_130_with_a_note(capsys):
    """Verify that Ctrl-C gives exit code 130 and a one-line note, even without --debug."""
    def body(args):
        raise KeyboardInterrupt

    assert run(_parser(), body, ["--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted")


def test_body_return_value_is_the_exit_code():
    """Verify that None means 0, an int is passed through, parsed args reach the body and
    --quiet logs warnings only."""
    seen = {}

    def body(args):
        seen["value"], seen["level"] = args.value, logging.getLogger().level
        return None

    assert run(_parser(), body, ["--value", "7", "--quiet"]) == 0
    assert seen == {"value": 7, "level": logging.WARNING}
    assert run(_parser(), lambda args: 3, []) == 3
    assert logging.getLogger().level == logging.INFO  # the default level
