"""The submission stage (nlb_ndt.stages.make_submission, via make_submission.py) on the fake search of
conftest's `search` fixture: choosing N, writing, scoring and marking unscored files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import BIN_MS, DATASET, GROUP, NAME, load_script

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
    from nlb_ndt.scoring.ensemble import weighted_mean

    result = make_submission([NAME], phase="val", ensemble_method="greedy", max_ensemble=12,
                             out=tmp_path / "g.h5", device="cpu")
    members = result.ensembles[NAME]["members"]
    tensors = search["tensors"]
    expected = weighted_mean(
        (snapshot_rates(m["path"], train_heldin=tensors["train_spikes_heldin"],
                        eval_heldin=tensors["eval_spikes_heldin"])[0], m["count"])
        for m in members)
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
