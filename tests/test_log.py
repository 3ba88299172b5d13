"""Logging set-up: root logger format and level, optional log file."""

from __future__ import annotations

import logging
import re

from nlb_ndt.log import setup_logging


def test_setup_logging_formats_stderr_and_writes_logfile(tmp_path, capsys):
    """Verify the level, the `HH:MM:SS LEVEL name: message` format on stderr, and that the
    log file (in a folder created on demand) receives the same lines."""
    logfile = tmp_path / "logs" / "run.log"
    setup_logging(logging.WARNING, logfile=logfile)
    log = logging.getLogger("nlb_ndt.example")
    log.info("hidden")
    log.warning("shown %d", 3)
    for handler in logging.getLogger().handlers:
        handler.flush()
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING nlb_ndt.example: shown 3\n", err), err
    assert logfile.read_text() == err
    assert logging.getLogger().level == logging.WARNING


def test_setup_logging_replaces_earlier_handlers(capsys):
    """Verify that calling it twice leaves one stderr handler (force=True), at the new level."""
    setup_logging(logging.INFO)
    setup_logging("DEBUG")
    root = logging.getLogger()
    assert len(root.handlers) == 1 and root.level == logging.DEBUG
    logging.getLogger("x").debug("once")
    assert capsys.readouterr().err.count("once") == 1
