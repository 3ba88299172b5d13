"""Refits on train+val (nlb_ndt.stages.refit, via make_submission.py --phase test --refit)."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import DATASET, GROUP, NAME, SPEC

from nlb_ndt.scoring.evalai_file import read_submission
from nlb_ndt.stages.make_submission import make_submission
from nlb_ndt.stages.refit import refit_dir

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.mark.slow
def test_refit_trains_each_member_on_train_and_val_and_is_reused(search, tmp_path):
    """Verify that a refit member trains on the train+val trials (the count it saw) for
    the epochs recorded with its snapshot, with its trial's seed; that the test-phase file
    averages the refits and says so; and that a re-run reuses the refits."""
    # Files of its own: the fake search's default submission paths belong to test_submit.
    result = make_submission([NAME], phase="test", ensemble_size=2, refit=True,
                             out=tmp_path / "refit-test.h5", device="cpu")
    assert result.refit and result.scores is not None
    saved = json.loads(result.scores_path.read_text())
    assert saved["refit"] is True and "train+val" in saved["models"]
    stamps = {}
    for member in result.ensembles[NAME]["members"]:
        run_dir = refit_dir(member)
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["n_train"] == SPEC.n_train + SPEC.n_val  # 75 + 25 trials
        assert info["train_splits"] == "train+val" and info["n_val"] == 0
        trial_cfg = (run_dir.parent.parent / "config.yaml").read_text()
        assert f"SEED: {info['seed']}" in trial_cfg
        with open(run_dir / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert int(rows[-1]["epoch"]) == member["epoch"] and rows[-1]["done"] == "True"
        final = run_dir / "ckpts" / f"{member['trial_id']}.final.pth"
        stamps[final] = final.stat().st_mtime_ns
    data = read_submission(result.path)[GROUP]
    assert data["train_rates_heldin"].shape[0] == SPEC.n_train + SPEC.n_val
    again = make_submission([NAME], phase="test", ensemble_size=2, refit=True,
                            out=tmp_path / "refit-test.h5", overwrite=True, device="cpu")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # reused, not retrained
    assert again.scores[0]["co-bps"] == result.scores[0]["co-bps"]
    assert DATASET in GROUP
