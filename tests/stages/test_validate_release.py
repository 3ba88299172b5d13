"""validate_test_submission.py on a fake released-checkpoint folder (the original's format).

The folder is built the way the Zenodo archive is laid out (<root>/<dataset>/models.csv
and <trial_id>.<lve|lfve>.pth), each .pth a dict pickled with plain torch.save holding a
yacs CfgNode config with the original's keys, the state dict, optimiser and scheduler
state, max_spikes, num_neurons, trial_length and the best-value records.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DATASET, PATH_VARS, ROOT, load_script, save_original_layout
from yacs.config import CfgNode

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.datasets import get_spec
from nlb_ndt.model.factory import build_model
from nlb_ndt.stages.validate_release import released_members

pytestmark = pytest.mark.usefixtures("one_blas_thread")





def ae_config() -> CfgNode:
    """A config with the original's keys only (ours minus the new ones), as it pickled it."""
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.NUM_LAYERS, m.HIDDEN_SIZE, m.EMBED_DIM, m.NUM_HEADS = 1, 16, 0, 2
    m.LEARNABLE_POSITION, m.PRE_NORM, m.FIXUP_INIT = True, True, True
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD, m.TRIAL_LENGTH = 10, 20, 0
    for node, key in (("MODEL", "FAST_ATTENTION"), ("DATA", "DATASET"), ("DATA", "BIN_MS"),
                      ("SYSTEM", "DEVICE"), ("TRAIN", "LFVE_LEGACY"),
                      ("TRAIN", "VAL_MASK_SEED"), ("TRAIN", "DATA_ON_DEVICE"),
                      ("TRAIN", "AMP"), ("TRAIN", "COMPILE")):
        del cfg[node][key]
    # Paths of the training machine, as the released files carry them.
    cfg.LOG_DIR = "/home/ubuntu/ray_results/ndt/logs"
    cfg.CHECKPOINT_DIR = "/home/ubuntu/ray_results/ndt/ckpts"
    cfg.DATA.DATAPATH = "/home/ubuntu/nlb_2021/neural-data-transformer"
    cfg.freeze()
    return cfg


def write_ae_checkpoint(path: Path, *, seed: int, num_neurons: int, trial_length: int,
                        max_spikes: int) -> None:
    """A snapshot in the original's Runner.save_checkpoint layout, random weights."""
    cfg = ae_config()
    torch.manual_seed(seed)
    model = build_model(_with_defaults(cfg), num_neurons=num_neurons, trial_length=trial_length,
                        max_spikes=max_spikes)
    with torch.no_grad():  # move every weight so members genuinely differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    save_original_layout(path, model, cfg, opt, max_spikes=max_spikes,
                         num_neurons=num_neurons, trial_length=trial_length, update=1200)


def _with_defaults(cfg: CfgNode) -> CfgNode:
    """Our defaults with the original's values merged in (to build the model to save)."""
    full = get_cfg_defaults()
    full.merge_from_other_cfg(cfg)
    return full


def make_release(root: Path, dataset: str, n_rows: int, *, num_neurons: int,
                 trial_length: int, max_spikes: int = 12) -> pd.DataFrame:
    """<root>/<dataset>/models.csv + one .pth per row (random co-bps, lve/lfve)."""
    folder = root / dataset
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_rows):
        trial_id = f"{i:02x}c0ffee"[:8]
        kind = ("lve", "lfve")[i % 2]
        write_ae_checkpoint(folder / f"{trial_id}.{kind}.pth", seed=i,
                            num_neurons=num_neurons, trial_length=trial_length,
                            max_spikes=max_spikes)
        rows.append({"trial_id": trial_id, "val_ckpt": kind,
                     "co-bps": float(rng.uniform(0.2, 0.4)), "lr": 1e-3})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)
    df.to_csv(folder / "models.csv")  # first column = the index, as the archive's
    return df


def original_style_submission(members, tensors, path: Path, group: str) -> None:
    """Rates of each member via the public inference path, np.stack(...).mean(0) in
    float32 (the original's averaging, not ours), written with nlb_tools' save_to_h5."""
    from nlb_tools.make_tensors import save_to_h5

    from nlb_ndt.model.checkpoint import load_model
    from nlb_ndt.model.inference import submission_rates

    outs = []
    for member in members:
        model, _ = load_model(member)
        outs.append(submission_rates(model, train_heldin=tensors["train_spikes_heldin"],
                                     eval_heldin=tensors["eval_spikes_heldin"]))
    mean = {k: np.stack([o[k] for o in outs]).mean(axis=0) for k in outs[0]}
    save_to_h5({group: mean}, str(path), overwrite=True)




@pytest.fixture(scope="module")
def release(synthetic_home, tmp_path_factory):
    """A fake SUBMISSION_VALIDATION_ROOT for the synthetic dataset and a matching submission.

    Built once per module (nine checkpoints, seven members' rates); the environment points
    NLB_HOME at the shared synthetic home and SUBMISSION_VALIDATION_ROOT at the fake release.
    """
    from nlb_ndt.data import preprocess

    tmp_path = tmp_path_factory.mktemp("release")
    root = tmp_path / "release"
    with pytest.MonkeyPatch.context() as mp:
        for var in PATH_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("NLB_HOME", str(synthetic_home))
        mp.setenv("SUBMISSION_VALIDATION_ROOT", str(root))
        tensors = preprocess.load_tensors(DATASET, phase="test", bin_ms=5)
        n_in = tensors["train_spikes_heldin"].shape[2]
        n_out = tensors["train_spikes_heldout"].shape[2]
        t_obs = tensors["train_spikes_heldin"].shape[1]
        t_fwd = tensors["train_spikes_heldin_forward"].shape[1]
        df = make_release(root, DATASET, get_spec(DATASET).ensemble_size + 2,
                          num_neurons=n_in + n_out, trial_length=t_obs + t_fwd)
        members = released_members(DATASET, root)
        sub = tmp_path / "submission.h5"
        original_style_submission(members, tensors, sub, get_spec(DATASET).group(5))
        yield {"root": root, "models": df, "members": members, "submission": sub}


def test_released_members_takes_top_n_by_cobps_in_order(release):
    """Verify that members are the top-N rows of models.csv by co-bps, best first."""
    df = release["models"].sort_values("co-bps", ascending=False)
    n = get_spec(DATASET).ensemble_size
    want = [f"{r.trial_id}.{r.val_ckpt}.pth" for r in df.head(n).itertuples()]
    assert [p.name for p in release["members"]] == want


def test_validate_script_passes_on_matching_submission(release, capsys):
    """Verify that validate_test_submission.py exits 0 and reports every array as ok."""
    script = load_script("validate_test_submission")
    code = script.main([DATASET, str(release["submission"])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("ok   mc_maze_small/") == 6
    assert "PASS" in out


def test_validate_script_fails_on_perturbed_copy(release, tmp_path, capsys):
    """Verify that a copy with one array off by 1e-4 (relative) exits 1 and names it."""
    bad = tmp_path / "perturbed.h5"
    bad.write_bytes(release["submission"].read_bytes())
    with h5py.File(bad, "a") as f:
        ds = f["mc_maze_small/eval_rates_heldout_forward"]
        arr = ds[()]
        arr[3, 5, 7] *= 1 + 1e-4
        ds[...] = arr
    script = load_script("validate_test_submission")
    code = script.main([DATASET, str(bad)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL mc_maze_small/eval_rates_heldout_forward" in out
    assert "1 elements beyond rtol" in out
    assert out.count("ok   mc_maze_small/") == 5


@pytest.mark.slow
def test_validate_script_cli_one_line_errors(nlb_env, tmp_path):
    """Verify that the real CLI reports a missing checkpoint root in one line, exit 1."""
    sub = tmp_path / "s.h5"
    with h5py.File(sub, "w") as f:
        f.create_group(DATASET)
    env = {**nlb_env.as_env(), "SUBMISSION_VALIDATION_ROOT": str(tmp_path / "none"),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(ROOT / "validate_test_submission.py"), DATASET,
                           str(sub)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no released checkpoints at")
    assert "download_checkpoints.py" in lines[0]
    bad = subprocess.run([sys.executable, str(ROOT / "validate_test_submission.py"),
                          "mc_mice", str(sub)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 1 and "unknown dataset 'mc_mice'" in bad.stderr


def test_released_members_applies_dmfc_swap_and_keeps_kind(tmp_path):
    """Verify that the dmfc_rsg ensemble swaps trial a6c8e99c for 91fde75c, same snapshot kind."""
    folder = tmp_path / "dmfc_rsg"
    folder.mkdir()
    ids = ["a6c8e99c"] + [f"{i:08x}" for i in range(1, 15)]
    rows = [{"trial_id": t, "val_ckpt": "lfve" if t == "a6c8e99c" else "lve",
             "co-bps": 0.3 - 0.01 * i} for i, t in enumerate(ids)]
    pd.DataFrame(rows).to_csv(folder / "models.csv")
    for r in rows[1:]:
        (folder / f"{r['trial_id']}.{r['val_ckpt']}.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="91fde75c.lfve.pth is missing"):
        released_members("dmfc_rsg", tmp_path)
    (folder / "91fde75c.lfve.pth").write_bytes(b"")
    members = released_members("dmfc_rsg", tmp_path)
    assert len(members) == get_spec("dmfc_rsg").ensemble_size == 13
    assert members[0].name == "91fde75c.lfve.pth"
    assert "a6c8e99c" not in "".join(p.name for p in members)


def test_released_members_refuses_short_models_csv(tmp_path):
    """Verify that a models.csv with fewer rows than the AESMTE3 size is a clear error."""
    folder = tmp_path / "mc_rtt"
    folder.mkdir()
    pd.DataFrame([{"trial_id": "aaaaaaaa", "val_ckpt": "lve", "co-bps": 0.2}]).to_csv(
        folder / "models.csv")
    with pytest.raises(ValueError, match="lists 1 snapshots; the AESMTE3 mc_rtt ensemble has 13"):
        released_members("mc_rtt", tmp_path)


def test_released_members_reads_numeric_looking_trial_ids_as_text(tmp_path):
    """Verify that hex ids pandas would parse as numbers ("00001234", "1e500000") stay text."""
    folder = tmp_path / "mc_maze_small"
    folder.mkdir()
    ids = ["00001234", "1e500000", "0000abcd", "00000007", "12345678", "00e00000", "7e7e7e7e"]
    rows = [{"trial_id": t, "val_ckpt": "lve", "co-bps": 0.3 - 0.01 * i} for i, t in enumerate(ids)]
    pd.DataFrame(rows).to_csv(folder / "models.csv")
    for t in ids:
        (folder / f"{t}.lve.pth").write_bytes(b"")
    assert [p.name for p in released_members("mc_maze_small", tmp_path)] == \
        [f"{t}.lve.pth" for t in ids]


@pytest.mark.slow
def test_validator_counts_a_member_listed_twice_twice(release, nlb_env, tmp_path,
                                                      monkeypatch, capsys):
    """Verify the one multiplicity rule on the validator path: a models.csv whose top N
    names one snapshot twice gives a member list with the repeat, the recomputed ensemble
    counts it twice (matching the original's mean over that list, not the mean of the
    distinct files), and the script reports it as "x2"."""
    import shutil

    from nlb_ndt.data import preprocess
    from nlb_ndt.paths import get_paths
    from nlb_ndt.stages.validate_release import validate_released_submission

    root = tmp_path / "release"
    shutil.copytree(release["root"], root)
    table = pd.read_csv(root / DATASET / "models.csv", index_col=0)
    ranked = table.sort_values("co-bps", ascending=False).index
    best, second = ranked[0], ranked[1]
    table.loc[second, ["trial_id", "val_ckpt"]] = table.loc[best, ["trial_id", "val_ckpt"]]
    table.to_csv(root / DATASET / "models.csv")
    monkeypatch.setenv("SUBMISSION_VALIDATION_ROOT", str(root))
    members = released_members(DATASET, root)
    assert len(members) == get_spec(DATASET).ensemble_size
    assert members[0] == members[1] and len(set(members)) == len(members) - 1
    tensors = preprocess.load_tensors(DATASET, phase="test", bin_ms=5)
    group = get_spec(DATASET).group(5)
    listed, distinct = tmp_path / "listed.h5", tmp_path / "distinct.h5"
    original_style_submission(members, tensors, listed, group)
    original_style_submission(list(dict.fromkeys(members)), tensors, distinct, group)
    result = validate_released_submission(DATASET, listed, paths=get_paths(), tensors=tensors)
    assert result.ok and result.members == members
    assert result.counts[members[0]] == 2 and sum(result.counts.values()) == len(members)
    script = load_script("validate_test_submission")
    assert script.main([DATASET, str(distinct)]) == 1
    out = capsys.readouterr().out
    assert f"{members[0].name} x2" in out and f"({len(members) - 1} distinct)" in out


def test_validate_script_checks_arguments_before_files(nlb_env, tmp_path, capsys):
    """Verify that a negative --rtol and an unknown device are refused in one line before
    the submission or any checkpoint is looked at."""
    script = load_script("validate_test_submission")
    with pytest.raises(SystemExit) as exited:
        script.main([DATASET, str(tmp_path / "missing.h5"), "--rtol", "-1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rtol" in err[0] and "missing.h5" not in err[0]
    assert script.main([DATASET, str(tmp_path / "missing.h5"), "--device", "abacus"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "abacus" in err[0] and "missing.h5" not in err[0]

