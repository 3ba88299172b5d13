"""The test/benchmark helpers: Poisson tensors of a dataset's shape, the original's files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.datasets import get_spec
from nlb_ndt.model.checkpoint import load_model
from nlb_ndt.model.factory import build_model
from nlb_ndt.testing import poisson_tensors, save_original_layout


@pytest.mark.parametrize("bin_ms", [5, 20])
def test_poisson_tensors_val_phase_shapes_follow_the_spec(bin_ms):
    """Verify the val phase: train and eval splits with the spec's trials, bins and neurons."""
    spec = get_spec("area2_bump")
    t_obs, t_fwd = spec.bins(bin_ms)
    out = poisson_tensors(spec, bin_ms, phase="val", seed=0)
    for prefix, n in (("train", spec.n_train), ("eval", spec.n_val)):
        assert out[f"{prefix}_spikes_heldin"].shape == (n, t_obs, spec.n_heldin)
        assert out[f"{prefix}_spikes_heldout"].shape == (n, t_obs, spec.n_heldout)
        assert out[f"{prefix}_spikes_heldin_forward"].shape == (n, t_fwd, spec.n_heldin)
        assert out[f"{prefix}_spikes_heldout_forward"].shape == (n, t_fwd, spec.n_heldout)
    assert len(out) == 8
    assert all(a.dtype == np.float32 for a in out.values())
    # Default rate: about 10 Hz, i.e. 0.05 spikes per 5 ms bin.
    assert out["train_spikes_heldin"].mean() == pytest.approx(0.05 * bin_ms / 5, rel=0.1)


def test_poisson_tensors_test_phase_shapes_and_seed():
    """Verify the test phase: train+val trials with everything, test trials held-in only;
    the same seed repeats the draw."""
    spec = get_spec("mc_maze_small")
    t_obs, _ = spec.bins(5)
    out = poisson_tensors(spec, phase="test", rate=0.3, seed=1)
    assert set(out) == {"train_spikes_heldin", "train_spikes_heldout",
                        "train_spikes_heldin_forward", "train_spikes_heldout_forward",
                        "eval_spikes_heldin"}
    assert out["train_spikes_heldout"].shape == (spec.n_train + spec.n_val, t_obs, spec.n_heldout)
    assert out["eval_spikes_heldin"].shape == (spec.n_test, t_obs, spec.n_heldin)
    again = poisson_tensors(spec, phase="test", rate=0.3, seed=1)
    np.testing.assert_array_equal(out["eval_spikes_heldin"], again["eval_spikes_heldin"])


def test_save_original_layout_loads_with_load_model(tmp_path):
    """Verify that a file in the original's layout loads through checkpoint.load_model as
    the "ae" format, with the same weights and the stored sizes."""
    cfg = get_cfg_defaults()
    cfg.MODEL.NUM_LAYERS, cfg.MODEL.HIDDEN_SIZE, cfg.MODEL.EMBED_DIM = 1, 16, 0
    cfg.MODEL.NUM_HEADS = 1
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg, num_neurons=7, trial_length=13, max_spikes=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = tmp_path / "abc.lve.pth"
    save_original_layout(path, model, cfg, opt, max_spikes=6, num_neurons=7, trial_length=13,
                         update=40)
    loaded, info = load_model(path)
    assert info["format"] == "ae"
    assert (info["max_spikes"], info["num_neurons"], info["trial_length"]) == (6, 7, 13)
    assert info["cfg"].MODEL.HIDDEN_SIZE == 16
    want = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
