"""Experiment folders: names that continue or start fresh."""

from __future__ import annotations

from nlb_ndt import hyperopt


def test_experiment_names_continue_or_fresh(tmp_path):
    """Verify that the newest experiment of a series is continued, and that fresh picks
    the next free name without touching the others."""
    base = "synthetic-s42"
    assert hyperopt.choose_experiment(tmp_path, base, fresh=False) == tmp_path / base
    assert hyperopt.choose_experiment(tmp_path, base, fresh=True) == tmp_path / base
    (tmp_path / base).mkdir()
    (tmp_path / f"{base}-smoke").mkdir()  # another series: ignored
    assert hyperopt.choose_experiment(tmp_path, base, fresh=False) == tmp_path / base
    assert hyperopt.choose_experiment(tmp_path, base, fresh=True) == tmp_path / f"{base}-2"
    (tmp_path / f"{base}-2").mkdir()
    (tmp_path / f"{base}-10").mkdir()
    assert hyperopt.choose_experiment(tmp_path, base, fresh=False) == tmp_path / f"{base}-10"
    assert hyperopt.choose_experiment(tmp_path, base, fresh=True) == tmp_path / f"{base}-11"
    assert [p.name for p in hyperopt.experiment_series(tmp_path, base)] == [
        base, f"{base}-2", f"{base}-10"]
