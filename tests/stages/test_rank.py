"""Ranking snapshots (nlb_ndt.stages.rank) on the fake search of conftest's `search` fixture.

The search (the layout run_hyperopt.py writes) holds untrained NDTs saved by
save_checkpoint: each one's decoder bias holds the log of the neurons' mean training rates
and its random weights add trial- and time-varying noise of a different size, so the
snapshots are genuinely different models of different quality. (Training real ones takes
minutes on a CPU; test_train.py covers training.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from helpers import AESMTE3_EXPERIMENT, NAME, copy_search

from nlb_ndt.model.checkpoint import load_model
from nlb_ndt.model.inference import predict_rates
from nlb_ndt.scoring.metrics import co_bps
from nlb_ndt.stages.rank import (
    check_experiments,
    experiment_settings,
    rank_snapshots,
    read_ranking,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_rank_snapshots_orders_by_cobps_with_metrics_and_hyperparameters(search):
    """Verify that models.csv ranks every snapshot by val co-bps computed independently."""
    df = rank_snapshots(NAME)
    assert len(df) == 6
    assert list(df["co-bps"]) == sorted(df["co-bps"], reverse=True)
    for col in ("trial_id", "val_ckpt", "co-bps", "fp-bps", "vel R2", "psth R2", "path",
                "experiment", "epoch", "TRAIN.LR.INIT", "MODEL.DROPOUT"):
        assert col in df.columns, col
    assert set(df["experiment"]) == {f"{NAME}-s0"}
    # Recompute one snapshot's co-bps by hand: the same number.
    row = df.iloc[4]
    model, info = load_model(row["path"])
    rates = predict_rates(model, search["tensors"]["eval_spikes_heldin"])
    want = co_bps(rates[:, : info["t_obs"], info["n_heldin"]:],
                  search["target"]["eval_spikes_heldout"])
    assert row["co-bps"] == pytest.approx(want, abs=1e-6)
    # Less noise, better model: the smallest-noise snapshot ranks first.
    best = min(search["snapshots"], key=lambda s: s["noise"])
    assert Path(df.iloc[0]["path"]) == best["path"].resolve()
    # The file on disk reads back like the released archive's (index column first).
    back = read_ranking(search["paths"].submissions_dir / NAME / "models.csv")
    assert list(back["trial_id"]) == list(df["trial_id"])


def test_rank_snapshots_rescores_only_new_or_changed(search):
    """Verify that a re-run reuses earlier scores and rescores only a touched snapshot."""
    out = search["paths"].submissions_dir / NAME
    first = rank_snapshots(NAME)
    stamps = {f: (out / f).stat().st_mtime_ns for f in first["rates_file"]}
    again = rank_snapshots(NAME)
    assert {f: (out / f).stat().st_mtime_ns for f in again["rates_file"]} == stamps
    touched = Path(first.iloc[-1]["path"])
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = rank_snapshots(NAME)
    changed = [f for f in third["rates_file"] if (out / f).stat().st_mtime_ns != stamps[f]]
    assert changed == [first.iloc[-1]["rates_file"]]
    assert int(third.set_index("path").loc[str(touched), "mtime_ns"]) == touched.stat().st_mtime_ns


def _copy_of_search(search, tmp_path, monkeypatch):
    """The fake search copied into a fresh NLB_HOME (so a test may change its files)."""
    return copy_search(search, tmp_path, monkeypatch)


def test_rank_snapshots_counts_identical_weights_once(search, tmp_path, monkeypatch):
    """Verify that a snapshot saved twice under two names (the same weights, as when a
    trial's best masked loss and best co-bps fall on one epoch) is one candidate, and that
    models.csv records which file it copies."""
    import shutil

    paths = _copy_of_search(search, tmp_path, monkeypatch)
    lve = sorted(paths.ray_tune_home.rglob("*.lve.pth"))[0]
    shutil.copyfile(lve, lve.with_name(lve.name.replace(".lve.", ".cobps.")))  # same weights
    ranking = rank_snapshots(NAME, paths=paths)
    assert len(ranking) == 5  # six files, five distinct models
    assert ranking["weights"].is_unique
    table = read_ranking(paths.submissions_dir / NAME / "models.csv")
    copies = table[table["same_weights_as"] != ""]
    assert len(copies) == 1 and len(table) == 6
    (copy,) = copies.to_dict("records")
    assert {Path(copy["path"]).name, Path(copy["same_weights_as"]).name} == {
        lve.name, lve.name.replace(".lve.", ".cobps.")}
    assert copy["co-bps"] == pytest.approx(
        table.loc[table["path"] == copy["same_weights_as"], "co-bps"].item(), abs=0)


def test_rank_snapshots_limits_candidates_to_kinds(search, tmp_path, monkeypatch):
    """Verify that kinds=("lve", "lfve") ranks only those kinds, keeps the others' rows in
    models.csv, and that an unknown kind is refused."""
    paths = _copy_of_search(search, tmp_path, monkeypatch)
    everything = rank_snapshots(NAME, paths=paths)
    two = rank_snapshots(NAME, paths=paths, kinds=("lve", "lfve"))
    assert set(two["val_ckpt"]) == {"lve", "lfve"} and len(two) == 4
    assert len(read_ranking(paths.submissions_dir / NAME / "models.csv")) == len(everything)
    with pytest.raises(ValueError, match="unknown snapshot kind"):
        rank_snapshots(NAME, paths=paths, kinds=("best",))


def test_rank_snapshots_records_experiment_profile_and_family(search):
    """Verify that models.csv records each snapshot's experiment, its experiment's profile
    (none recorded here) and its model family, taken from the snapshot's own config."""
    df = rank_snapshots(NAME)
    back = read_ranking(search["paths"].submissions_dir / NAME / "models.csv")
    for table in (df, back):
        assert {"experiment", "profile", "family"} <= set(table.columns)
        assert set(table["family"]) == {"ndt"}
        assert table["profile"].isna().all()


def test_each_experiment_ranks_its_own_recorded_kinds(experiments_search):
    """Verify that two experiments of one run keep their own recorded snapshot kinds (the
    aesmte3 one lve and lfve, the unrecorded one all three), that models.csv records each
    row's experiment and profile, and that explicit kinds apply to every experiment."""
    paths = experiments_search["paths"]
    settings = experiment_settings(NAME, paths=paths)
    assert settings[AESMTE3_EXPERIMENT].kinds == ("lve", "lfve")
    assert settings[AESMTE3_EXPERIMENT].profile == "aesmte3"
    assert settings[f"{NAME}-s0"].kinds == ("lve", "lfve", "cobps")
    assert not settings[f"{NAME}-s0"].recorded
    ranking = rank_snapshots(NAME)
    kinds = ranking.groupby("experiment")["val_ckpt"].agg(set).to_dict()
    assert kinds == {f"{NAME}-s0": {"lve", "lfve", "cobps"},
                     AESMTE3_EXPERIMENT: {"lve", "lfve"}}
    assert len(ranking) == 6 + 4
    profiles = ranking.groupby("experiment")["profile"].first().to_dict()
    assert profiles[AESMTE3_EXPERIMENT] == "aesmte3" and pd.isna(profiles[f"{NAME}-s0"])
    only_lve = rank_snapshots(NAME, kinds=("lve",))
    assert set(only_lve["val_ckpt"]) == {"lve"} and len(only_lve) == 4
    assert set(only_lve["experiment"]) == {f"{NAME}-s0", AESMTE3_EXPERIMENT}


def test_check_experiments_refuses_differing_settings_unless_combined(experiments_search):
    """Verify that pooling experiments whose settings differ is refused in one line naming
    both and their differences, allowed when combined or when one experiment is picked."""
    with pytest.raises(ValueError) as refused:
        check_experiments(NAME)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{NAME}-s0 (profile none, snapshots lve,lfve,cobps)" in message
    assert f"{AESMTE3_EXPERIMENT} (profile aesmte3, snapshots lve,lfve)" in message
    assert "--experiments" in message and "--combine-experiments" in message
    assert len(check_experiments(NAME, combine=True)) == 10
    assert len(check_experiments(NAME, experiments=[AESMTE3_EXPERIMENT])) == 4
    # The same kinds for all: only the profile differs now.
    with pytest.raises(ValueError, match="profile none\\) and .*profile aesmte3\\) differ"):
        check_experiments(NAME, kinds=("lve",))

