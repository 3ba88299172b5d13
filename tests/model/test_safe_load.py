"""Reading checkpoint files safely: the allow-list, and refusals that run nothing."""

from __future__ import annotations

import os
import pickle

import pytest

from nlb_ndt.model.safe_load import ALLOWED_GLOBALS, UnsafeCheckpointError, read_checkpoint


class SystemCall:
    """A pickle payload: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_read_checkpoint_refuses_plain_payload_without_executing(tmp_path):
    """Verify that a bare malicious pickle (no checkpoint around it) is refused unexecuted."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump(SystemCall(marker), f, protocol=2)  # the old non-zip torch layout
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_allowed_globals_is_the_documented_list():
    """Verify that the allow-list names exactly what the original's files need."""
    assert sorted(ALLOWED_GLOBALS) == sorted([
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter", "yacs.config.CfgNode", "builtins.set",
        "__builtin__.set"])


def test_read_checkpoint_missing_file_names_path(tmp_path):
    """Verify that a missing file raises FileNotFoundError naming the path."""
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_checkpoint(tmp_path / "nope.pth")


# --- STNDT's file format ---------------------------------------------------------------
