"""The submission stage (nlb_ndt.stages.make_submission, via make_submission.py) on the fake
search of conftest's `search` fixture: choosing N, writing, scoring and marking unscored
files; checking every argument first; and a run with two experiments (`experiments_search`)."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from helpers import AESMTE3_EXPERIMENT, BIN_MS, DATASET, GROUP, NAME, copy_search, load_script

from nlb_ndt.data import preprocess
from nlb_ndt.scoring.evalai_file import read_submission
from nlb_ndt.scoring.metrics import co_bps
from nlb_ndt.stages.make_submission import make_submission

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_make_submission_val_picks_argmax_and_file_passes_evaluate(search, capsys):
    """Verify that the val phase uses the argmax N, beats the best single snapshot, and that
    the saved scores are nlb_tools' evaluate() of the file on disk."""
    code = load_script("make_submission").main([NAME, "--phase", "val", "--max-ensemble", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    folder = search["paths"].submissions_dir / NAME
    curve = pd.read_csv(folder / "ensemble.csv")
    choice = json.loads((folder / "ensemble.json").read_text())
    assert list(curve["n"]) == list(range(1, 7))
    assert choice["chosen_n"] == choice["argmax_n"] == int(curve["co-bps"].idxmax()) + 1
    assert choice["chosen_n"] > 1  # averaging independently noisy models helps here
    best_single = pd.read_csv(folder / "models.csv", index_col=0)["co-bps"].max()
    assert curve["co-bps"].iloc[0] == pytest.approx(best_single, abs=1e-9)
    # The scores saved beside the file come from evaluate() on the file, and equal the
    # curve's maximum recomputed from the file's own arrays.
    sub = folder / "submission-val.h5"
    scores = json.loads((folder / "submission-val.scores.json").read_text())
    assert scores["scored"] and scores["file"] == str(sub)
    (row,) = scores["scores"]
    assert {"co-bps", "vel R2", "psth R2", "fp-bps"} <= set(row) and row["group"] == GROUP
    data = read_submission(sub)[GROUP]
    from_file = co_bps(data["eval_rates_heldout"], search["target"]["eval_spikes_heldout"])
    assert row["co-bps"] == pytest.approx(from_file, abs=1e-9)
    assert row["co-bps"] == pytest.approx(curve["co-bps"].max(), abs=1e-6)
    assert row["co-bps"] > best_single
    assert data["train_rates_heldin"].shape == search["tensors"]["train_spikes_heldin"].shape
    assert scores["ensembles"][NAME]["chosen_n"] == choice["chosen_n"]
    # (The rates-vs-truth figure is demo.py's since the redesign, not the stage's.)
    for png in ("ensemble.png", "search.png"):
        assert (folder / png).stat().st_size > 1000, png
    assert "co-bps" in out and DATASET in out and "20 ms" in out


def test_make_submission_refuses_to_overwrite(search, capsys):
    """Verify that an existing submission is not replaced without --overwrite (one line)."""
    out = search["paths"].submissions_dir / "taken.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"earlier")
    assert load_script("make_submission").main([NAME, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken.h5 exists; pass --overwrite" in err[0]
    assert out.read_bytes() == b"earlier"


def test_make_submission_test_phase_scored_against_ground_truth(search):
    """Verify that the test phase averages test-trial rates and scores against eval_data_test.h5."""
    result = make_submission([NAME], phase="test", ensemble_size=2, device="cpu")
    assert result.path.name == "submission-test.h5"
    assert result.target == str(search["paths"].eval_data_test)
    assert result.scores and np.isfinite(result.scores[0]["co-bps"])
    assert result.ensembles[NAME]["chosen_n"] == 2
    assert result.ensembles[NAME]["chosen_by"] == "--ensemble-size"
    test = preprocess.load_tensors(DATASET, phase="test", bin_ms=BIN_MS)
    data = read_submission(result.path)[GROUP]
    assert data["eval_rates_heldin"].shape[0] == test["eval_spikes_heldin"].shape[0]
    assert data["train_rates_heldin"].shape[0] == test["train_spikes_heldin"].shape[0]


def test_make_submission_marks_test_phase_unscored_without_ground_truth(search, tmp_path):
    """Verify that without ground truth the file is written and clearly marked unscored."""
    result = make_submission([NAME], phase="test", out=tmp_path / "t.h5",
                             ground_truth=tmp_path / "missing.h5", device="cpu")
    assert result.path.is_file() and result.scores is None
    assert "download_data.py --eval-data" in result.reason
    saved = json.loads(result.scores_path.read_text())
    assert saved["scored"] is False and saved["scores"] == [] and "missing.h5" in saved["reason"]


def test_make_submission_greedy_beats_top_n_at_every_size(search, tmp_path):
    """Verify greedy selection on the fake search: its val co-bps is >= the top-N mean's at
    every size, its members carry multiplicities that add up to its size, the file scores
    what the curve says, and ensemble.csv / the plot hold both curves."""
    out = tmp_path / "greedy-val.h5"
    result = make_submission([NAME], phase="val", ensemble_method="greedy", max_ensemble=8,
                             out=out, device="cpu")
    choice = result.ensembles[NAME]
    topn, greedy = choice["topn_curve"], choice["greedy_curve"]
    assert choice["method"] == "greedy" and len(greedy) == 8 and len(topn) == 6
    for size in range(1, len(topn) + 1):
        assert greedy[size - 1] >= topn[size - 1] - 1e-12, size
    assert max(greedy) >= max(topn)
    counts = [m["count"] for m in choice["members"]]
    assert sum(counts) == choice["chosen_n"] and choice["distinct_members"] == len(counts)
    assert choice["chosen_co-bps"] == pytest.approx(max(greedy), abs=1e-12)
    data = read_submission(out)[GROUP]
    assert co_bps(data["eval_rates_heldout"], search["target"]["eval_spikes_heldout"]) == \
        pytest.approx(choice["chosen_co-bps"], abs=1e-6)
    table = pd.read_csv(search["paths"].submissions_dir / NAME / "ensemble.csv")
    assert {"co-bps", "greedy_co-bps", "greedy_trial_id"} <= set(table.columns)
    assert (search["paths"].submissions_dir / NAME / "ensemble.png").stat().st_size > 1000


def test_make_submission_greedy_repeats_a_member_without_running_it_twice(search, tmp_path):
    """Verify that a member chosen k times counts k times in the file: the submission equals
    the weighted mean of its distinct members' rates, each computed once."""
    from nlb_ndt.model.inference import snapshot_rates
    from nlb_ndt.scoring.ensemble import RunningMean

    result = make_submission([NAME], phase="val", ensemble_method="greedy", max_ensemble=12,
                             out=tmp_path / "g.h5", device="cpu")
    members = result.ensembles[NAME]["members"]
    assert max(m["count"] for m in members) > 1  # a repeat, for this test to mean anything
    choice = result.choices[NAME]
    assert [c for _, c in choice.members] == [m["count"] for m in members]
    tensors = search["tensors"]
    running = RunningMean()
    for m in members:
        running.add(snapshot_rates(m["path"], train_heldin=tensors["train_spikes_heldin"],
                                   eval_heldin=tensors["eval_spikes_heldin"])[0],
                    count=m["count"])
    expected = running.mean()
    data = read_submission(tmp_path / "g.h5")[GROUP]
    for key, value in expected.items():
        np.testing.assert_allclose(data[key], value, rtol=1e-6)


def test_make_submission_refuses_refit_for_the_val_phase(search, capsys):
    """Verify that --refit --phase val is refused with one line, before anything is ranked
    or written, by the script and by the function."""
    folder = search["paths"].submissions_dir / NAME
    before = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert load_script("make_submission").main([NAME, "--phase", "val", "--refit"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refit applies to --phase test only" in err[0]
    with pytest.raises(ValueError, match="--phase test only"):
        make_submission([NAME], phase="val", refit=True)
    after = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    assert after == before


def test_max_ensemble_zero_fails_at_once_without_ranking(search, tmp_path, monkeypatch,
                                                          capsys):
    """Verify that --max-ensemble 0 is refused in under a second, in one line, before any
    snapshot is scored (no models.csv), by the script and by the function."""
    paths = copy_search(search, tmp_path / "home", monkeypatch)
    script = load_script("make_submission")
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exited:
        script.main([NAME, "--max-ensemble", "0"])
    assert exited.value.code == 2
    with pytest.raises(ValueError, match="--max-ensemble must be a whole number >= 1"):
        make_submission([NAME], max_ensemble=0)
    assert time.perf_counter() - started < 1.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-ensemble" in err[0] and "at least 1" in err[0]
    assert not (paths.submissions_dir / NAME / "models.csv").exists()


def test_make_submission_checks_every_argument_before_any_work(search, tmp_path,
                                                                monkeypatch):
    """Verify that bad sizes, methods, kinds, experiments and devices are refused before
    any snapshot is scored, each with its own message, and nothing is written."""
    paths = copy_search(search, tmp_path / "home", monkeypatch)
    bad = [({"ensemble_size": 0}, "--ensemble-size must be 'auto'"),
           ({"ensemble_size": "most"}, "--ensemble-size must be 'auto'"),
           ({"ensemble_size": 7}, "--ensemble-size 7: synthetic has 6 snapshots"),
           ({"ensemble_method": "greedy", "max_ensemble": 3, "ensemble_size": 4},
            "greedy selection takes --max-ensemble 3 steps"),
           ({"ensemble_method": "best"}, "unknown ensemble method 'best'"),
           ({"snapshots": ("lve", "best")}, "unknown snapshot kind"),
           ({"experiments": ["nope"]}, "--experiments nope: not an experiment of run "
                                       "synthetic \\(its experiments: synthetic-s0\\)"),
           ({"phase": "train"}, "phase must be one of"),
           ({"device": "abacus"}, "abacus")]
    for kwargs, message in bad:
        started = time.perf_counter()
        with pytest.raises((ValueError, RuntimeError), match=message):
            make_submission([NAME], **kwargs)
        assert time.perf_counter() - started < 1.0, kwargs
    with pytest.raises(FileNotFoundError, match="no config for run 'nosuchrun'"):
        make_submission([NAME, "nosuchrun"])
    assert not paths.submissions_dir.exists()


def test_experiments_with_different_settings_are_refused_in_one_line(experiments_search,
                                                                      capsys):
    """Verify that a run whose experiments recorded different profiles and snapshot kinds
    is refused without --combine-experiments: one line naming both experiments, their
    differing settings and both ways to proceed; nothing ranked or written."""
    ranking = experiments_search["paths"].submissions_dir / NAME / "models.csv"
    before = ranking.stat().st_mtime_ns if ranking.exists() else None
    assert load_script("make_submission").main([NAME]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{NAME}-s0 (profile none, snapshots lve,lfve,cobps)" in err[0]
    assert f"{AESMTE3_EXPERIMENT} (profile aesmte3, snapshots lve,lfve)" in err[0]
    assert "--experiments NAME,..." in err[0] and "--combine-experiments" in err[0]
    assert (ranking.stat().st_mtime_ns if ranking.exists() else None) == before


@pytest.mark.slow
def test_combined_experiments_pool_their_snapshots_and_record_them(experiments_search,
                                                                   tmp_path, capsys):
    """Verify that --combine-experiments ranks both experiments' snapshots (each its own
    kinds), that top-N and greedy choose among all of them, and that ensemble.json's
    members carry experiment, profile and family; --experiments picks one instead."""
    script = load_script("make_submission")
    code = script.main([NAME, "--combine-experiments", "--max-ensemble", "10", "--out",
                        str(tmp_path / "pooled.h5"), "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "pooled experiments" in out.out
    folder = experiments_search["paths"].submissions_dir / NAME
    choice = json.loads((folder / "ensemble.json").read_text())
    assert len(choice["topn_curve"]) == 10  # 6 + 4 candidates, swept to the end
    assert choice["experiments"] == [f"{NAME}-s0", AESMTE3_EXPERIMENT]
    for member in choice["members"]:
        assert member["experiment"] in (f"{NAME}-s0", AESMTE3_EXPERIMENT)
        assert member["profile"] == ("aesmte3" if member["experiment"] == AESMTE3_EXPERIMENT
                                     else None)
        assert member["family"] == "ndt"
    table = pd.read_csv(folder / "models.csv", index_col=0)
    assert set(table.loc[table["experiment"] == AESMTE3_EXPERIMENT, "val_ckpt"]) == \
        {"lve", "lfve"}
    greedy = make_submission([NAME], combine_experiments=True, ensemble_method="greedy",
                             max_ensemble=12, out=tmp_path / "greedy.h5", device="cpu")
    chosen = greedy.choices[NAME]
    assert len(chosen.topn_curve) == 10 and max(chosen.steps) < 10
    assert all(m["experiment"] and m["family"] == "ndt"
               for m in greedy.ensembles[NAME]["members"])
    picked = make_submission([NAME], experiments=[AESMTE3_EXPERIMENT], max_ensemble=10,
                             out=tmp_path / "picked.h5", device="cpu")
    assert len(picked.ensembles[NAME]["topn_curve"]) == 4
    assert {m["experiment"] for m in picked.ensembles[NAME]["members"]} == \
        {AESMTE3_EXPERIMENT}

