"""Choosing an ensemble's members (nlb_ndt.scoring.selection): one function per method, one
EnsembleChoice each, and what ensemble.csv / ensemble.json say about a choice."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nlb_ndt.scoring.ensemble import RunningMean, choose_size, ensemble_curve, greedy_selection
from nlb_ndt.scoring.metrics import co_bps
from nlb_ndt.scoring.selection import (
    SELECTORS,
    EnsembleChoice,
    NpyFiles,
    check_selection,
    ensemble_record,
    ensemble_table,
    select_greedy,
    select_topn,
    write_ensemble_files,
)


def _truth(seed: int = 3, shape=(40, 30, 12)):
    """Smooth true rates (spikes/bin) and Poisson spikes drawn from them."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, shape[1])[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (shape[0], 1, shape[2]))
    rates = 0.3 + 0.25 * (1 + np.sin(t + phase))
    return rates, rng.poisson(rates).astype(np.float64)


def _ranked_members(n: int, seed: int = 4):
    """n independently noisy copies of the true rates, best single co-bps first."""
    rates, spikes = _truth()
    rng = np.random.default_rng(seed)
    members = [(rates * np.exp(0.5 * rng.standard_normal(rates.shape))).astype(np.float32)
               for _ in range(n)]
    return sorted(members, key=lambda m: co_bps(m, spikes), reverse=True), spikes


def _rows(n: int) -> list[dict]:
    """Ranking records (as models.csv's) for n snapshots."""
    return [{"trial_id": f"{i:08x}", "val_ckpt": "lve", "co-bps": 0.3 - 0.01 * i,
             "path": f"/x/{i}.lve.pth", "epoch": 10 + i, "experiment": "run-s0",
             "profile": float("nan"), "family": "ndt"} for i in range(n)]


def _mean_cobps(members, counts: dict[int, int], spikes) -> float:
    """Val co-bps of the float32 mean of members with multiplicities."""
    running = RunningMean()
    for index, count in counts.items():
        running.add({"r": members[index]}, count=count)
    return co_bps(running.mean()["r"], spikes)


class _Reads(list):
    """A list that records which indices were read."""

    def __init__(self, items):
        super().__init__(items)
        self.read: set[int] = set()

    def __getitem__(self, index):
        self.read.add(index)
        return super().__getitem__(index)


def test_select_topn_takes_the_argmax_prefix_and_reads_only_what_it_sweeps():
    """Verify that top-N chooses the first argmax_n snapshots once each, that its curve is
    ensemble_curve's, and that only the first max_ensemble candidates are read."""
    members, spikes = _ranked_members(10)
    candidates = _Reads(members)
    choice = select_topn(candidates, spikes, max_ensemble=6)
    assert isinstance(choice, EnsembleChoice) and choice.method == "topn"
    np.testing.assert_array_equal(choice.curve, ensemble_curve(members[:6], spikes))
    assert choice.topn_curve == choice.curve and choice.steps == tuple(range(6))
    assert choice.argmax_n == choose_size(np.asarray(choice.curve)) == choice.chosen_n > 1
    assert choice.members == tuple((i, 1) for i in range(choice.chosen_n))
    assert choice.chosen_by == "argmax of val co-bps"
    assert choice.chosen_cobps == choice.curve[choice.chosen_n - 1]
    assert choice.chosen_cobps == pytest.approx(
        _mean_cobps(members, choice.counts, spikes), abs=1e-12)
    assert candidates.read == set(range(6))


def test_select_topn_size_override_extends_the_sweep_and_is_bounded():
    """Verify that a given N is used as is (the curve reaching it), and that N beyond the
    candidates is refused."""
    members, spikes = _ranked_members(8)
    choice = select_topn(members, spikes, max_ensemble=3, ensemble_size=5)
    assert choice.chosen_n == 5 and choice.chosen_by == "--ensemble-size"
    assert len(choice.curve) == 5 and choice.chosen_cobps == choice.curve[4]
    assert choice.argmax_n == choose_size(np.asarray(choice.curve))
    with pytest.raises(ValueError, match="only 8 candidate snapshots"):
        select_topn(members, spikes, ensemble_size=9)


def test_select_greedy_keeps_the_selections_own_counts_in_first_pick_order():
    """Verify that greedy's members are GreedySelection's counts of its best prefix, in
    order of first pick, that its curves are greedy's and top-N's, and that the chosen
    co-bps is that of the mean with those multiplicities."""
    members, spikes = _ranked_members(6)
    choice = select_greedy(members, spikes, max_ensemble=8)
    sel = greedy_selection(members, spikes, max_steps=8)
    assert choice.method == "greedy" and choice.steps == tuple(sel.steps)
    np.testing.assert_array_equal(choice.curve, sel.curve)
    np.testing.assert_array_equal(choice.topn_curve, ensemble_curve(members, spikes))
    assert choice.chosen_n == choice.argmax_n == sel.best_n
    assert choice.chosen_by == "argmax of greedy val co-bps"
    assert choice.counts == sel.members
    firsts = list(dict.fromkeys(sel.steps[:sel.best_n]))
    assert [index for index, _ in choice.members] == firsts
    assert sum(count for _, count in choice.members) == choice.chosen_n
    assert choice.chosen_cobps == pytest.approx(
        _mean_cobps(members, choice.counts, spikes), abs=1e-9)
    assert choice.topn_argmax_n == choose_size(np.asarray(choice.topn_curve))


def test_select_greedy_size_override_takes_that_prefix():
    """Verify that greedy with N given keeps the first N steps, counted as picked."""
    members, spikes = _ranked_members(5)
    choice = select_greedy(members, spikes, max_ensemble=6, ensemble_size=2)
    assert choice.chosen_n == 2 and choice.chosen_by == "--ensemble-size"
    want: dict[int, int] = {}
    for index in choice.steps[:2]:
        want[index] = want.get(index, 0) + 1
    assert choice.members == tuple(want.items())
    assert choice.chosen_cobps == choice.curve[1]


def test_check_selection_names_the_option_at_fault():
    """Verify the argument checks shared by both methods and the stage."""
    assert check_selection("topn", max_ensemble=5, ensemble_size="auto") is None
    assert check_selection("greedy", max_ensemble=5, ensemble_size="3") == 3
    with pytest.raises(ValueError, match="--max-ensemble must be a whole number >= 1"):
        check_selection("topn", max_ensemble=0, ensemble_size="auto")
    for bad in (0, "0", "many", True, 2.5):
        with pytest.raises(ValueError, match="--ensemble-size must be 'auto'"):
            check_selection("topn", max_ensemble=5, ensemble_size=bad)
    with pytest.raises(ValueError, match="greedy selection takes --max-ensemble 5 steps"):
        check_selection("greedy", max_ensemble=5, ensemble_size=6)
    with pytest.raises(ValueError, match="unknown ensemble method 'best'"):
        check_selection("best", max_ensemble=5, ensemble_size="auto")
    assert set(SELECTORS) == {"topn", "greedy"}


def test_ensemble_table_and_record_describe_the_choice(tmp_path):
    """Verify ensemble.csv's columns (greedy's padded to its steps) and ensemble.json's
    fields, members with counts, experiment, profile and family."""
    members, spikes = _ranked_members(4)
    rows = _rows(4)
    greedy = select_greedy(members, spikes, max_ensemble=6)
    table = ensemble_table(greedy, rows)
    assert table["n"] == list(range(1, 7)) and len(table["co-bps"]) == 6
    assert table["co-bps"][4:] == [None, None] and table["greedy_co-bps"] == list(greedy.curve)
    assert table["greedy_trial_id"] == [rows[i]["trial_id"] for i in greedy.steps]
    record = ensemble_record("run", greedy, rows)
    assert record["chosen_n"] == sum(m["count"] for m in record["members"])
    assert record["distinct_members"] == len(greedy.members)
    assert record["argmax_n"] == greedy.topn_argmax_n and record["max_ensemble"] == 4
    assert record["greedy_curve"] == list(greedy.curve)
    assert record["greedy_argmax_n"] == greedy.argmax_n
    first = record["members"][0]
    assert first["trial_id"] == rows[greedy.members[0][0]]["trial_id"]
    assert (first["experiment"], first["profile"], first["family"]) == ("run-s0", None, "ndt")
    assert record["experiments"] == ["run-s0"]
    topn = ensemble_record("run", select_topn(members, spikes, max_ensemble=3), rows)
    assert topn["greedy_curve"] is None and topn["greedy_argmax_n"] is None
    assert set(ensemble_table(select_topn(members, spikes), rows)) == {
        "n", "co-bps", "member_trial_id", "member_val_ckpt", "member_co-bps"}
    write_ensemble_files(tmp_path, table, record)
    assert json.loads((tmp_path / "ensemble.json").read_text()) == record
    assert list(pd.read_csv(tmp_path / "ensemble.csv")["n"]) == list(range(1, 7))


def test_npy_files_map_each_array_on_demand(tmp_path):
    """Verify that NpyFiles reads each file as a memmap when indexed, in order, and that
    selections on it equal selections on the arrays in memory."""
    members, spikes = _ranked_members(4)
    files = []
    for i, member in enumerate(members):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], member)
    lazy = NpyFiles(files)
    assert len(lazy) == 4 and isinstance(lazy[2], np.memmap) and len(lazy[1:3]) == 2
    np.testing.assert_array_equal(lazy[3], members[3])
    assert select_topn(lazy, spikes) == select_topn(members, spikes)
    assert select_greedy(list(lazy), spikes, max_ensemble=5) == \
        select_greedy(members, spikes, max_ensemble=5)
