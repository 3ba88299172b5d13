"""The one way this package writes files: all or nothing."""

from __future__ import annotations

import pytest

from nlb_ndt.atomic import atomic_write, write_text_atomic


def test_atomic_write_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    """Verify that a failed write leaves the old file and no temporary file, and a
    successful one replaces it (creating missing folders)."""
    path = tmp_path / "sub" / "scores.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]

    with atomic_write(path, suffix=".png") as tmp:
        assert tmp.name.startswith(".") and tmp.suffix == ".png" and tmp.parent == path.parent
        tmp.write_text("new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]
