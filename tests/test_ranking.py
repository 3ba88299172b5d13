"""Ranking snapshots (nlb_ndt.ranking) on the fake search of conftest's `search` fixture.

The search (the layout run_hyperopt.py writes) holds untrained NDTs saved by
save_checkpoint: each one's decoder bias holds the log of the neurons' mean training rates
and its random weights add trial- and time-varying noise of a different size, so the
snapshots are genuinely different models of different quality. (Training real ones takes
minutes on a CPU; test_train.py covers training.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import NAME

from nlb_ndt.checkpoint import load_model
from nlb_ndt.inference import predict_rates
from nlb_ndt.metrics import co_bps
from nlb_ndt.ranking import rank_snapshots, read_ranking

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
