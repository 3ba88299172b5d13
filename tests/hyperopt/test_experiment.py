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


def test_repair_state_puts_back_the_last_complete_copy_of_a_cut_state_file(tmp_path):
    """Verify the repair of Tune's state files: a cut JSON or pickle is replaced by its
    complete copy, a whole file is left alone, and a cut file without a copy stays (and is
    reported) rather than being replaced by anything else."""
    import pickle

    from nlb_ndt.hyperopt.experiment import STATE_BACKUP_DIR, StateBackup, repair_state

    state = tmp_path / "experiment_state-2026.json"
    searcher = tmp_path / "searcher-state-2026.pkl"
    other = tmp_path / "search_gen_state-2026.json"
    state.write_text('{"trials": [1, 2]}')
    pickled = pickle.dumps({"Xi": [[0.1, 2]], "yi": [0.5]})
    searcher.write_bytes(pickled)
    other.write_text("{}")
    StateBackup(tmp_path).copy_complete()
    assert sorted(p.name for p in (tmp_path / STATE_BACKUP_DIR).iterdir()) == sorted(
        p.name for p in (state, searcher, other))
    state.write_text('{"trials": [1, 2, 3]')  # cut mid-write
    searcher.write_bytes(pickled[: len(pickled) // 2])
    StateBackup(tmp_path).copy_complete()  # a cut file never replaces its copy
    other.write_text('{"a": 1}')
    lonely = tmp_path / "basic-variant-state-2026.json"
    lonely.write_bytes(b"")
    assert sorted(repair_state(tmp_path)) == sorted([state.name, searcher.name])
    assert state.read_text() == '{"trials": [1, 2]}' and searcher.read_bytes() == pickled
    assert other.read_text() == '{"a": 1}' and lonely.read_bytes() == b""
