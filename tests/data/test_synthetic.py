"""The embedded synthetic dataset: DANDI layout, nlb_tools compatibility, ground truth, CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from helpers import SPEC
from threadpoolctl import threadpool_limits

from nlb_ndt.data import synthetic
from nlb_ndt.data import synthetic_models as _synth_models
from nlb_ndt.datasets import RATE_KEYS, get_spec


def _scores(target, group, rates) -> dict:
    from nlb_tools.evaluation import evaluate

    with threadpool_limits(limits=1):  # sklearn's small fits crawl with competing threads
        result = evaluate(target, {group: rates})
    return {k.split("] ")[-1]: float(v) for entry in result for m in entry.values()
            for k, v in m.items()}


def test_synthetic_writes_dandi_layout(synthetic_home):
    """Verify that generate writes the NWB pair, marker, truth and test ground truth."""
    raw = synthetic_home / "raw"
    ds_dir = raw / SPEC.dandiset_id
    subject = ds_dir / "sub-Jenkins"
    assert (subject / "sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb").is_file()
    assert (subject / "sub-Jenkins_ses-small_desc-test_ecephys.nwb").is_file()
    assert sorted(p.name for p in (ds_dir / "sub-Jenkins").iterdir()) == sorted(
        [SPEC.train_file.split("/")[1], SPEC.test_file.split("/")[1]])
    marker = json.loads((ds_dir / synthetic.MARKER).read_text())
    assert marker["synthetic"] and marker["complete"]
    assert (marker["like"], marker["seed"]) == (SPEC.name, 0)
    assert marker["trials"] == [75, 25, 100]
    assert (ds_dir / synthetic.TRUTH).is_file()
    with h5py.File(raw / synthetic.EVAL_DATA_TEST, "r") as f:
        assert f.attrs["synthetic"]
        assert set(f) == {SPEC.group(5), SPEC.group(20)}
        g = f[SPEC.name]
        for key in ("eval_spikes_heldout", "train_behavior", "eval_behavior", "psth",
                    "eval_spikes_heldin_forward", "eval_spikes_heldout_forward",
                    "eval_cond_idx", "train_cond_idx"):
            assert key in g, key
        assert g["eval_spikes_heldout"].shape == (100, 140, 35)
        assert g["eval_spikes_heldin_forward"].shape == (100, 40, 107)
        assert g["train_behavior"].shape == (100, 140, 2)  # train + val trials
        assert f["mc_maze_small_20"]["eval_spikes_heldout"].shape == (100, 35, 35)


def test_synthetic_loads_in_unmodified_nlb_tools(synthetic_home):
    """Verify that NWBDataset reads the files and gives the real dataset's tensor shapes."""
    from nlb_tools.make_tensors import make_eval_input_tensors, make_train_input_tensors
    from nlb_tools.nwb_interface import NWBDataset

    ds = NWBDataset(str(synthetic_home / "raw" / SPEC.folder))
    counts = ds.trial_info.split.value_counts().to_dict()
    assert counts == {"test": 100, "train": 75, "val": 25}
    assert ds.data["spikes"].shape[1] == 107 and ds.data["heldout_spikes"].shape[1] == 35
    for col in ("move_onset_time", "trial_type", "trial_version"):
        assert col in ds.trial_info
    # 1 ms behaviour on the spike grid: no NaN inside the train file's trials.
    train = ds.trial_info[ds.trial_info.split != "test"]
    vel = ds.data["hand_vel"].loc[train.start_time.iloc[0]:train.end_time.iloc[-1]]
    assert list(vel.columns) == ["x", "y"] and not vel.isna().any().any()
    assert vel.abs().max().max() > 50  # mm/s: the hand actually moves

    ds.resample(5)
    tr = make_train_input_tensors(ds, SPEC.name, trial_split="train", save_file=False,
                                  include_forward_pred=True)
    assert tr["train_spikes_heldin"].shape == (75, 140, 107)
    assert tr["train_spikes_heldout"].shape == (75, 140, 35)
    assert tr["train_spikes_heldin_forward"].shape == (75, 40, 107)
    assert tr["train_spikes_heldout_forward"].shape == (75, 40, 35)
    test = make_eval_input_tensors(ds, SPEC.name, trial_split="test", save_file=False)
    assert set(test) == {"eval_spikes_heldin"}  # the test file has held-in units only
    assert test["eval_spikes_heldin"].shape == (100, 140, 107)
    rate_hz = np.nanmean(tr["train_spikes_heldin"].astype(float)) * 200
    assert 5 < rate_hz < 60


def test_synthetic_simulation_is_deterministic():
    """Verify that one seed gives identical spikes and latents and another seed does not."""
    a = _synth_models.simulate(SPEC, seed=3, counts=(6, 4, 4))
    b = _synth_models.simulate(SPEC, seed=3, counts=(6, 4, 4))
    c = _synth_models.simulate(SPEC, seed=4, counts=(6, 4, 4))
    assert np.array_equal(a.train.latents, b.train.latents)
    assert all(np.array_equal(x, y) for x, y in zip(a.test.spike_times, b.test.spike_times))
    assert np.array_equal(a.heldout, b.heldout) and a.heldout.sum() == 35
    assert not np.array_equal(a.train.latents, c.train.latents)


@pytest.mark.slow
def test_synthetic_true_rates_match_spikes(synthetic_home):
    """Verify that true rates are aligned with nlb_tools' tensors (per-neuron totals agree)."""
    from nlb_tools.evaluation import bits_per_spike

    from nlb_ndt.data import preprocess
    from nlb_ndt.paths import get_paths

    paths = get_paths({"NLB_HOME": str(synthetic_home)})
    tensors = preprocess.load_tensors(SPEC.name, phase="val", paths=paths)
    rates = synthetic.true_rates(synthetic_home / "raw", SPEC.name, phase="val")
    assert set(rates) == set(RATE_KEYS)
    assert all(v.dtype == np.float32 for v in rates.values())
    for kind in ("heldin", "heldout"):
        spikes = tensors[f"train_spikes_{kind}"].sum(axis=(0, 1))
        expected = rates[f"train_rates_{kind}"].sum(axis=(0, 1))
        # Poisson: totals within 5 s.d.; a wrong neuron order or window would break this.
        assert np.all(np.abs(spikes - expected) < 5 * np.sqrt(expected) + 5), kind
        # And over time: the population time course of the rates follows the spikes.
        r = np.corrcoef(tensors[f"train_spikes_{kind}"].sum(axis=(0, 2)),
                        rates[f"train_rates_{kind}"].sum(axis=(0, 2)))[0, 1]
        assert r > 0.8, (kind, r)
    # To the bin: moving the rates one bin either way fits the spikes worse.
    spikes, true = tensors["train_spikes_heldin"], rates["train_rates_heldin"]
    best = bits_per_spike(true.astype(float), spikes.astype(float))
    for shifted in (np.concatenate([true[:, :1], true[:, :-1]], axis=1),
                    np.concatenate([true[:, 1:], true[:, -1:]], axis=1)):
        assert bits_per_spike(shifted.astype(float), spikes.astype(float)) < best - 0.002


def test_synthetic_reuses_complete_output(synthetic_home):
    """Verify that a re-run with the same arguments rewrites nothing; other ones refuse."""
    raw = synthetic_home / "raw"
    nwb = raw / SPEC.dandiset_id / SPEC.train_file
    before = nwb.stat().st_mtime_ns
    assert synthetic.generate(raw, like=SPEC.name, seed=0) == raw / SPEC.folder
    assert nwb.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.generate(raw, like=SPEC.name, seed=1)


def test_synthetic_refuses_real_dandi_folder(tmp_path):
    """Verify that a dandiset folder with .nwb files but no marker is never written into."""
    real = tmp_path / SPEC.folder
    real.mkdir(parents=True)
    (real / "sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb").write_bytes(b"real")
    with pytest.raises(synthetic.RealDataError, match="refusing") as err:
        synthetic.generate(tmp_path, like=SPEC.name)
    assert "\n" not in str(err.value)
    assert not (tmp_path / SPEC.dandiset_id / synthetic.MARKER).exists()
    assert not (tmp_path / synthetic.EVAL_DATA_TEST).exists()


def test_synthetic_refuses_real_eval_data(tmp_path):
    """Verify that a foreign eval_data_test.h5 (the real ground truth) is never modified."""
    with h5py.File(tmp_path / synthetic.EVAL_DATA_TEST, "w") as f:
        f["mc_maze/eval_spikes_heldout"] = np.zeros((2, 3, 4))
    with pytest.raises(synthetic.RealDataError, match="eval_data_test.h5"):
        synthetic.generate(tmp_path, like=SPEC.name)
    assert not (tmp_path / SPEC.dandiset_id).exists()


def test_synthetic_cli_help(capsys):
    """Verify that the CLI prints its usage and exits 0."""
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--out" in out and "--like" in out and "--seed" in out


def test_synthetic_cli_error_is_one_line(tmp_path, capsys):
    """Verify that a refused run exits 1 with a single `error:` line."""
    (tmp_path / SPEC.folder).mkdir(parents=True)
    (tmp_path / SPEC.folder / "x.nwb").write_bytes(b"real")
    assert synthetic.main(["--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.slow
def test_synthetic_cli_run_dmfc(tmp_path, monkeypatch):
    """Verify that a CLI run writes a DMFC-shaped set whose targets (NaN-padded) score."""
    from nlb_ndt.data import preprocess
    from nlb_ndt.paths import get_paths

    raw = tmp_path / "raw"
    code = synthetic.main(["--out", str(raw), "--like", "dmfc_rsg", "--seed", "2",
                           "--trials", "24", "24", "24", "--quiet"])
    assert code == 0
    spec = get_spec("dmfc_rsg")
    assert (raw / spec.dandiset_id / spec.train_file).is_file()
    assert "behavior" not in spec.train_file

    paths = get_paths({"NLB_HOME": str(tmp_path)})
    tensors = preprocess.load_tensors("dmfc_rsg", phase="val", paths=paths)
    assert tensors["train_spikes_heldin"].shape == (24, 300, 40)
    assert tensors["eval_spikes_heldout_forward"].shape == (24, 40, 14)
    target = preprocess.load_val_target("dmfc_rsg", paths=paths)
    heldout = target["dmfc_rsg"]["eval_spikes_heldout"]
    assert heldout.dtype == np.float32 and np.isnan(heldout).any()  # set->go, NaN-padded
    # DMFC's PSTHs (front-padded, outliers skipped) and jitter equal nlb_tools' own.
    from nlb_tools.make_tensors import make_eval_target_tensors
    from nlb_tools.nwb_interface import NWBDataset

    ds = NWBDataset(str(raw / spec.folder))
    ds.resample(5)
    expected = make_eval_target_tensors(ds, "dmfc_rsg", "train", "val", include_psth=True,
                                        save_file=False)["dmfc_rsg"]
    np.testing.assert_allclose(target["dmfc_rsg"]["psth"], expected["psth"], rtol=1e-6,
                               atol=1e-9, equal_nan=True)
    for key in ("eval_jitter", "train_jitter"):
        np.testing.assert_array_equal(target["dmfc_rsg"][key], expected[key])
    scores = _scores(target, "dmfc_rsg", synthetic.true_rates(raw, "dmfc_rsg", phase="val"))
    assert scores["co-bps"] > 0.1 and np.isfinite(scores["tp corr"])
    test_scores = _scores(str(raw / synthetic.EVAL_DATA_TEST), "dmfc_rsg",
                          synthetic.true_rates(raw, "dmfc_rsg", phase="test"))
    assert test_scores["co-bps"] > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("like", ["mc_rtt", "area2_bump"])
def test_synthetic_other_shapes_score(tmp_path, like):
    """Verify that RTT- and Area2-shaped sets load, give tensors and score their true rates."""
    from nlb_ndt.data import preprocess
    from nlb_ndt.paths import get_paths

    raw = tmp_path / "raw"
    synthetic.generate(raw, like=like, seed=1, trials=(40, 16, 16))
    spec = get_spec(like)
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    tensors = preprocess.load_tensors(like, phase="val", paths=paths)
    t_obs, t_fwd = spec.bins(5)
    assert tensors["train_spikes_heldin"].shape == (40, t_obs, spec.n_heldin)
    assert tensors["eval_spikes_heldout_forward"].shape == (16, t_fwd, spec.n_heldout)
    scores = _scores(preprocess.load_val_target(like, paths=paths), like,
                     synthetic.true_rates(raw, like, phase="val"))
    assert scores["co-bps"] > 0.05 and scores["vel R2"] > 0.3
