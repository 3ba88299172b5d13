"""Ranking snapshots, choosing N and writing submissions, on the synthetic dataset.

A fake search (the layout run_hyperopt.py writes: RAY_TUNE_HOME/<NAME>/<experiment>/
<trial_dir>/ with config.yaml, metrics.csv, params.json and ckpts/<trial_id>.<kind>.pth)
is filled with untrained NDTs saved by save_checkpoint: each one's decoder bias holds the
log of the neurons' mean training rates and its random weights add trial- and time-varying
noise of a different size, so the snapshots are genuinely different models of different
quality. (Training real ones takes minutes on a CPU; test_train.py covers training.)
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import PATH_VARS, load_script

from nlb_ndt.config import apply_overrides, load_config
from nlb_ndt.paths import get_paths

pytestmark = pytest.mark.usefixtures("one_blas_thread")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "configs" / "templates" / "synthetic.yaml"
NAME = "synthetic"
GROUP = "mc_maze_small_20"  # the synthetic template trains at 20 ms
KINDS = ("lve", "lfve", "cobps")




def _snapshot_model(cfg, *, mean_rates: np.ndarray, noise: float, seed: int, max_spikes: int,
                    trial_length: int):
    from nlb_ndt.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg, num_neurons=mean_rates.size, trial_length=trial_length,
                        max_spikes=max_spikes)
    with torch.no_grad():
        # The decoder reads a unit-variance LayerNorm output, so log-rates get noise of
        # standard deviation ~`noise` around log(mean rate) - noise^2 / 2 (an unbiased rate).
        weight = model.decoder[0].weight
        weight.uniform_(-1.0, 1.0).mul_(noise * np.sqrt(3.0 / weight.shape[1]))
        model.decoder[0].bias.copy_(torch.from_numpy(np.log(mean_rates) - noise**2 / 2))
    return model.eval()


def _fill_search(paths, tensors) -> list[dict]:
    """Two trials x three snapshots in the run_hyperopt layout; returns what was written."""
    from nlb_ndt.checkpoint import save_checkpoint

    base = load_config(TEMPLATE, ["MODEL.NUM_LAYERS", 1, "MODEL.HIDDEN_SIZE", 16])
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    (paths.config_dir / f"{NAME}.yaml").write_text(base.dump())
    spikes = np.concatenate([tensors["train_spikes_heldin"], tensors["train_spikes_heldout"]],
                            axis=2)
    mean_rates = np.nanmean(spikes, axis=(0, 1)).clip(1e-3)
    n_in, t_obs = tensors["train_spikes_heldin"].shape[2], tensors["train_spikes_heldin"].shape[1]
    trial_length = t_obs + tensors["train_spikes_heldin_forward"].shape[1]
    written = []
    for i in range(2):
        trial_id = f"{0xabc00 + i:08x}"
        params = {"TRAIN.LR.INIT": 1e-3 * (i + 1), "MODEL.DROPOUT": 0.05 * i}
        cfg = apply_overrides(base, {**params, "SEED": 100 + i})
        trial_dir = paths.ray_tune_home / NAME / f"{NAME}-s0" / f"run_trial_{trial_id}_{i:05d}"
        (trial_dir / "ckpts").mkdir(parents=True)
        (trial_dir / "config.yaml").write_text(cfg.dump())
        (trial_dir / "params.json").write_text(json.dumps(params))
        with open(trial_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "best_masked_loss", "best_val_cobps", "done"])
            for epoch in (10, 20):
                writer.writerow([epoch, 0.5 - 0.01 * i - 0.001 * epoch, 0.01 * i, epoch == 20])
        for k, kind in enumerate(KINDS):
            noise = 0.10 + 0.04 * (3 * i + k)  # 0.10 .. 0.30: distinct qualities
            model = _snapshot_model(cfg, mean_rates=mean_rates, noise=noise, seed=10 * i + k,
                                    max_spikes=int(np.nanmax(spikes)) + 3,
                                    trial_length=trial_length)
            path = trial_dir / "ckpts" / f"{trial_id}.{kind}.pth"
            save_checkpoint(path, model, cfg, n_heldin=n_in, t_obs=t_obs, epoch=10 * (k + 1),
                            trial_id=trial_id, kind=kind)
            written.append({"path": path, "trial_id": trial_id, "kind": kind, "noise": noise})
    return written


@pytest.fixture(scope="module")
def search(synthetic_home, tmp_path_factory):
    """A fresh NLB_HOME (submissions, configs, searches) reading the shared synthetic data."""
    from nlb_ndt import preprocess

    home = tmp_path_factory.mktemp("ranking_home")
    with pytest.MonkeyPatch.context() as mp:
        for var in PATH_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("NLB_HOME", str(home))
        mp.setenv("NLB_DATA_RAW", str(synthetic_home / "raw"))
        mp.setenv("NDT_CACHE_DIR", str(synthetic_home / "neural-data-transformer"))
        paths = get_paths()
        tensors = preprocess.load_tensors("mc_maze_small", phase="val", bin_ms=20)
        snapshots = _fill_search(paths, tensors)
        yield {"paths": paths, "snapshots": snapshots,
               "target": preprocess.load_val_target("mc_maze_small", bin_ms=20)[GROUP],
               "tensors": tensors}


def test_rank_snapshots_orders_by_cobps_with_metrics_and_hyperparameters(search):
    """Verify that models.csv ranks every snapshot by val co-bps computed independently."""
    from nlb_ndt.checkpoint import load_model
    from nlb_ndt.metrics import co_bps
    from nlb_ndt.inference import predict_rates
    from nlb_ndt.ranking import rank_snapshots, read_ranking

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
    from nlb_ndt.ranking import rank_snapshots

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


def test_make_submission_val_picks_argmax_and_file_passes_evaluate(search, capsys):
    """Verify that the val phase uses the argmax N, beats the best single snapshot, and that
    the saved scores are nlb_tools' evaluate() of the file on disk."""
    from nlb_ndt.metrics import co_bps
    from nlb_ndt.submission import read_submission

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
    for png in ("ensemble.png", "search.png", f"submission-val.rates.{GROUP}.png"):
        assert (folder / png).stat().st_size > 1000, png
    assert "co-bps" in out and "mc_maze_small" in out and "20 ms" in out


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
    from nlb_ndt import preprocess
    from nlb_ndt.submit import make_submission

    result = make_submission([NAME], phase="test", ensemble_size=2, device="cpu")
    assert result.path.name == "submission-test.h5"
    assert result.target == str(search["paths"].eval_data_test)
    assert result.scores and np.isfinite(result.scores[0]["co-bps"])
    assert result.ensembles[NAME]["chosen_n"] == 2
    assert result.ensembles[NAME]["chosen_by"] == "--ensemble-size"
    test = preprocess.load_tensors("mc_maze_small", phase="test", bin_ms=20)
    from nlb_ndt.submission import read_submission

    data = read_submission(result.path)[GROUP]
    assert data["eval_rates_heldin"].shape[0] == test["eval_spikes_heldin"].shape[0]
    assert data["train_rates_heldin"].shape[0] == test["train_spikes_heldin"].shape[0]


def test_make_submission_marks_test_phase_unscored_without_ground_truth(search, tmp_path):
    """Verify that without ground truth the file is written and clearly marked unscored."""
    from nlb_ndt.submit import make_submission

    result = make_submission([NAME], phase="test", out=tmp_path / "t.h5",
                             ground_truth=tmp_path / "missing.h5", device="cpu")
    assert result.path.is_file() and result.scores is None
    assert "download_data.py --eval-data" in result.reason
    saved = json.loads(result.scores_path.read_text())
    assert saved["scored"] is False and saved["scores"] == [] and "missing.h5" in saved["reason"]


def test_find_snapshots_leaves_out_smoke_tests_unless_alone(tmp_path):
    """Verify that smoke-test experiments are ranked only when the run has nothing else."""
    from nlb_ndt.paths import get_paths
    from nlb_ndt.runs import find_snapshots

    paths = get_paths({"NLB_HOME": str(tmp_path)})
    root = paths.ray_tune_home / "run"

    def touch(experiment: str, trial_id: str) -> None:
        ckpts = root / experiment / f"trial_{trial_id}" / "ckpts"
        ckpts.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (ckpts / f"{trial_id}.{kind}.pth").write_bytes(b"")

    touch("run-s0-smoke", "aaaa0001")
    found = find_snapshots("run", paths=paths)
    assert {s.experiment for s in found} == {"run-s0-smoke"} and len(found) == 3
    touch("run-s0", "bbbb0002")
    touch("run-s0-smoke-2", "cccc0003")
    found = find_snapshots("run", paths=paths)
    assert {s.experiment for s in found} == {"run-s0"}
    assert {s.trial_id for s in found} == {"bbbb0002"}
