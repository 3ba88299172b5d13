"""Tests for nlb_ndt.model.checkpoint: our format, the original's format, and the allow-list."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from helpers import save_original_layout
from yacs.config import CfgNode

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.model.checkpoint import load_model, save_checkpoint
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.inference import predict_rates
from nlb_ndt.model.safe_load import UnsafeCheckpointError, read_checkpoint

N_IN, N_OUT, T_OBS, T_FWD, MAX_SPIKES = 5, 2, 10, 3, 6


def tiny_cfg(embed_dim: int = 0) -> CfgNode:
    """A 2-layer NDT config shaped like the NLB templates (learned positions, pre-norm)."""
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.NUM_LAYERS, m.HIDDEN_SIZE, m.EMBED_DIM = 2, 16, embed_dim
    m.NUM_HEADS = 1 if embed_dim == 0 else 2  # d = 7 is odd; d = 2 * 7 = 14 is even
    m.LEARNABLE_POSITION, m.PRE_NORM, m.FIXUP_INIT = True, True, True
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD = 2, 3
    cfg.DATA.DATASET = "mc_maze_small"
    cfg.freeze()
    return cfg


def tiny_model(cfg: CfgNode, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg, num_neurons=N_IN + N_OUT, trial_length=T_OBS + T_FWD,
                        max_spikes=MAX_SPIKES)
    # Move every parameter off its initial value so a load that silently kept fresh
    # weights could not pass by accident.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def model_input(seed: int = 1, trials: int = 4) -> torch.Tensor:
    """(B, T, N) counts with held-out neurons and forward bins zeroed, as at inference."""
    rng = np.random.default_rng(seed)
    x = np.zeros((trials, T_OBS + T_FWD, N_IN + N_OUT), dtype=np.float32)
    x[:, :T_OBS, :N_IN] = rng.poisson(1.5, (trials, T_OBS, N_IN)).clip(0, MAX_SPIKES)
    return torch.from_numpy(x)


def log_rates(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[1]


def legacy_config(log_dir: str, ckpt_dir: str) -> CfgNode:
    """A pickled-config stand-in for the original's: its keys, paths, one unknown key."""
    cfg = tiny_cfg().clone()
    cfg.defrost()
    # Keys the original never had.
    del cfg.MODEL["FAST_ATTENTION"], cfg.DATA["DATASET"], cfg.DATA["BIN_MS"]
    del cfg.TRAIN["LFVE_LEGACY"], cfg.SYSTEM["DEVICE"]
    cfg.MODEL.TRIAL_LENGTH = 0  # the original's "full length"
    cfg.LOG_DIR, cfg.CHECKPOINT_DIR = log_dir, ckpt_dir
    cfg.TENSORBOARD_DIR = os.path.join(log_dir, "tb")
    cfg.DATA.DATAPATH = "/home/trainer/ndt_cache"
    cfg.TRAIN.TUNE_HP_JSON = "/home/trainer/configs/mc_maze_small.json"
    cfg.set_new_allowed(True)
    cfg.MODEL.SOME_RETIRED_OPTION = 3  # an extra key our defaults do not know
    cfg.freeze()  # the original pickled a frozen node
    return cfg


def write_legacy(path, model, cfg: CfgNode, *, protocol: int = 2) -> None:
    """Write a file laid out as the original's Runner.save_checkpoint did (pickled)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(model_input(), model_input())[0].backward()
    opt.step()
    opt.zero_grad()
    model.eval()
    save_original_layout(path, model, cfg, opt, max_spikes=MAX_SPIKES, num_neurons=N_IN + N_OUT,
                         trial_length=T_OBS + T_FWD, update=40, protocol=protocol)


class SystemCall:
    """A pickle payload: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecCall:
    """A pickle payload: unpickling it runs Python code that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("embed_dim", [0, 2])
def test_load_model_round_trip_predicts_identically(tmp_path, embed_dim):
    """Verify that a saved and re-loaded model gives bit-identical log-rates, in eval mode."""
    cfg = tiny_cfg(embed_dim)
    model = tiny_model(cfg)
    path = save_checkpoint(tmp_path / "ckpts" / "abc.lve.pth", model, cfg, n_heldin=N_IN,
                           t_obs=T_OBS, epoch=40, trial_id="abc", kind="lve",
                           metrics={"val_cobps": np.float32(0.125)})
    loaded, info = load_model(path)
    assert not loaded.training
    x = model_input()
    assert torch.equal(log_rates(loaded, x), log_rates(model, x))
    assert info["format"] == "nlb_ndt"
    assert (info["num_neurons"], info["trial_length"], info["max_spikes"]) == (
        N_IN + N_OUT, T_OBS + T_FWD, MAX_SPIKES)
    assert (info["n_heldin"], info["t_obs"], info["epoch"], info["kind"]) == (
        N_IN, T_OBS, 40, "lve")
    assert info["metrics"] == {"val_cobps": 0.125}
    assert info["cfg"].MODEL.EMBED_DIM == embed_dim
    assert info["cfg"].dump() == cfg.dump()
    assert info["versions"]["torch"] == torch.__version__


def test_save_checkpoint_loads_with_weights_only(tmp_path):
    """Verify that our file holds only plain types: torch.load(weights_only=True) reads it."""
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    path = save_checkpoint(tmp_path / "m.pth", model, cfg, metrics={"loss": torch.tensor(1.5)})
    data = torch.load(path, weights_only=True)
    assert data["format"] == "nlb_ndt" and data["format_version"] == 1
    assert isinstance(data["config"], str)
    assert type(data["state_dict"]) is dict
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu"
               for v in data["state_dict"].values())
    assert data["metrics"] == {"loss": 1.5}
    assert (data["bin_ms"], data["dataset"]) == (5, "mc_maze_small")
    assert sorted(os.listdir(tmp_path)) == ["m.pth"]  # the temporary file is gone


def test_save_checkpoint_rejects_unknown_field(tmp_path):
    """Verify that a misspelt extra field raises instead of being stored or dropped."""
    cfg = tiny_cfg()
    with pytest.raises(TypeError, match="epochs"):
        save_checkpoint(tmp_path / "m.pth", tiny_model(cfg), cfg, epochs=3)
    assert not (tmp_path / "m.pth").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol", [2, 4])
def test_load_model_reads_original_format_strictly(tmp_path, protocol):
    """Verify that an original-layout file (pickled CfgNode) loads and predicts identically."""
    model = tiny_model(tiny_cfg())
    path = tmp_path / "a6c8e99c.lve.pth"
    write_legacy(path, model, legacy_config(str(tmp_path / "logs"), str(tmp_path / "ck")),
                 protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):  # why the restricted path exists at all
        torch.load(path, weights_only=True)

    loaded, info = load_model(path)
    x = model_input(seed=3)
    assert torch.equal(log_rates(loaded, x), log_rates(model, x))
    assert not loaded.training
    assert info["format"] == "ae"
    assert (info["num_neurons"], info["trial_length"], info["max_spikes"]) == (
        N_IN + N_OUT, T_OBS + T_FWD, MAX_SPIKES)
    cfg = info["cfg"]
    assert isinstance(cfg, CfgNode) and "SOME_RETIRED_OPTION" not in cfg.MODEL
    assert (cfg.MODEL.NUM_LAYERS, cfg.MODEL.HIDDEN_SIZE, cfg.MODEL.CONTEXT_BACKWARD) == (2, 16, 3)
    assert cfg.MODEL.FAST_ATTENTION is True  # our key, absent from the file: our default
    assert info["legacy"]["best_val"] == {"value": 0.25, "update": 40}


def test_load_model_never_creates_legacy_dirs(tmp_path):
    """Verify that loading an original file creates none of the folders its config names."""
    log_dir, ckpt_dir = tmp_path / "train_machine" / "logs", tmp_path / "train_machine" / "ck"
    path = tmp_path / "legacy.pth"
    write_legacy(path, tiny_model(tiny_cfg()), legacy_config(str(log_dir), str(ckpt_dir)))
    _, info = load_model(path)
    assert info["cfg"].LOG_DIR == str(log_dir)  # the path was read...
    assert not (tmp_path / "train_machine").exists()  # ...and nothing was made there
    assert sorted(os.listdir(tmp_path)) == ["legacy.pth"]


def test_load_model_rejects_out_of_range_positions(tmp_path):
    """Verify that stored learned-position indices 1..T (the OFFSET bug) give a clear error."""
    path = tmp_path / "offset.pth"
    write_legacy(path, tiny_model(tiny_cfg()),
                 legacy_config(str(tmp_path / "l"), str(tmp_path / "c")))
    data = read_checkpoint(path)
    data["state_dict"]["pos_encoder.pe"] += 1
    torch.save(data, path)
    with pytest.raises(ValueError, match="OFFSET"):
        load_model(path)


def test_load_model_rejects_mismatched_weights(tmp_path):
    """Verify that weights that do not fit the stored config raise a ValueError naming the file."""
    model = tiny_model(tiny_cfg())
    path = tmp_path / "bad.pth"
    cfg = legacy_config(str(tmp_path / "l"), str(tmp_path / "c"))
    cfg.defrost()
    cfg.MODEL.HIDDEN_SIZE = 32
    write_legacy(path, model, cfg)
    with pytest.raises(ValueError, match="bad.pth"):
        load_model(path)


@pytest.mark.parametrize("payload, refused", [(SystemCall, "system"), (ExecCall, "exec")])
def test_read_checkpoint_refuses_disallowed_global_without_executing(tmp_path, payload,
                                                                     refused):
    """Verify that a pickle naming anything off the allow-list is refused and never runs."""
    marker = tmp_path / "pwned"
    payload(marker).__reduce__()  # sanity: the payload is well formed...
    assert not marker.exists()  # ...and building it does not run it
    # Hidden where the original's files hold plain values, next to a genuine CfgNode so
    # the file looks legacy and reaches the restricted unpickler.
    model = tiny_model(tiny_cfg())
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "config": tiny_cfg(),
                "num_neurons": 7, "trial_length": 13, "max_spikes": 6,
                "extra_state": {"update": payload(marker)}}, path)
    for load in (read_checkpoint, load_model):
        with pytest.raises(UnsafeCheckpointError, match=refused) as err:
            load(path)
        assert str(path) in str(err.value)
        assert not marker.exists()


def stndt_cfg() -> CfgNode:
    """Our config of a 2-layer STNDT shaped like STNDT's shipped configs (LINEAR_EMBEDDER,
    learned positions without offset, pre-norm, ScaleNorm, gelu)."""
    cfg = tiny_cfg().clone()
    cfg.defrost()
    m = cfg.MODEL
    m.SPATIAL_ATTENTION, m.NUM_HEADS, m.EMBED_DIM = True, 1, 1  # N = 7, T = 13: one head
    m.LINEAR_EMBEDDER, m.SCALE_NORM, m.ACTIVATION, m.POSITION.OFFSET = True, True, "gelu", False
    cfg.freeze()
    return cfg


def stndt_file_config() -> CfgNode:
    """A stand-in for STNDT's pickled config: its MODEL.NAME, none of our keys it lacks
    (no SPATIAL_ATTENTION: the loader must tell STNDT apart otherwise), extra keys."""
    cfg = stndt_cfg().clone()
    cfg.defrost()
    for key in ("FAMILY", "SPATIAL_ATTENTION", "FAST_ATTENTION"):
        del cfg.MODEL[key]
    del cfg.DATA["DATASET"], cfg.TRAIN["LFVE_LEGACY"], cfg.SYSTEM["DEVICE"]
    cfg.set_new_allowed(True)
    cfg.MODEL.NAME = "NeuralDataTransformer"
    cfg.MODEL.CONTRAST_LAYER = "embedder"  # keys our defaults do not have
    cfg.TRAIN.LAMBDA = 0.1
    cfg.freeze()
    return cfg


def write_stndt(path, model, cfg: CfgNode, *, protocol: int = 2, projector: bool = False):
    """Write `model` laid out as STNDT's Runner saves a snapshot (its documented format)."""
    state = model.state_dict()
    if projector:  # the contrast heads, trained for the contrastive loss only
        n, t = model.num_neurons, model.trial_length
        state.update({"projector.weight": torch.randn(n, n), "projector.bias": torch.zeros(n),
                      "spatial_projector.weight": torch.randn(t, t),
                      "spatial_projector.bias": torch.zeros(t)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    record = {"value": torch.tensor(0.25), "update": 40}
    torch.save({
        "state_dict": state, "optim_state": opt.state_dict(), "lr_scheduler": None,
        "config": cfg, "best_val": record, "best_cobps": {"value": 0.31, "update": 40},
        "best_contrast": {"value": 1.5, "update": 30}, "best_unmasked_val": record,
        "best_r2": {"value": -100, "update": -1},
        "max_spikes": MAX_SPIKES, "num_neurons": N_IN + N_OUT, "trial_length": T_OBS + T_FWD,
        "extra_state": {"update": 40, "checkpoint": 0, "pth_time": 10.0,
                        "max_spikes": MAX_SPIKES},
    }, path, pickle_protocol=protocol)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("protocol, projector", [(2, False), (4, True)])
def test_load_model_reads_stndt_format_strictly(tmp_path, protocol, projector):
    """Verify that an STNDT-layout file (pickled CfgNode, MODEL.NAME of the NDT) is told
    apart, loads strictly into our STNDT and predicts identically."""
    model = tiny_model(stndt_cfg())
    path = tmp_path / "stndt.pth"
    write_stndt(path, model, stndt_file_config(), protocol=protocol, projector=projector)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded, info = load_model(path)
    x = model_input(seed=4)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(log_rates(loaded, x), log_rates(model, x))
    assert info["format"] == "stndt" and info["max_spikes"] == MAX_SPIKES
    assert info["cfg"].MODEL.SPATIAL_ATTENTION is True
    assert "CONTRAST_LAYER" not in info["cfg"].MODEL
    assert info["legacy"]["best_cobps"] == {"value": 0.31, "update": 40}
    assert info["legacy"]["best_contrast"]["value"] == 1.5


def test_stndt_file_predicts_clamped_to_its_max_spikes(tmp_path):
    """Verify that inference on an STNDT file clamps held-in counts to the file's max_spikes
    (no +3), zeros held-out neurons and forward bins, and does not mask."""
    model = tiny_model(stndt_cfg())
    path = tmp_path / "stndt.pth"
    write_stndt(path, model, stndt_file_config())
    loaded, _ = load_model(path)
    heldin = np.random.default_rng(0).poisson(4.0, (6, T_OBS, N_IN))
    assert heldin.max() > MAX_SPIKES
    rates = predict_rates(loaded, heldin)
    src = np.zeros((6, T_OBS + T_FWD, N_IN + N_OUT), dtype=np.float32)
    src[:, :T_OBS, :N_IN] = np.minimum(heldin, MAX_SPIKES)
    want = torch.exp(log_rates(model, torch.from_numpy(src))).numpy()
    np.testing.assert_allclose(rates, want, rtol=1e-6)


def test_stndt_round_trips_through_our_format(tmp_path):
    """Verify that our own snapshot of an STNDT (config with SPATIAL_ATTENTION True) loads
    back as an STNDT with bit-identical log-rates."""
    cfg = stndt_cfg()
    model = tiny_model(cfg)
    path = save_checkpoint(tmp_path / "s.pth", model, cfg, kind="lve")
    loaded, info = load_model(path)
    assert type(loaded) is type(model) and info["format"] == "nlb_ndt"
    assert info["cfg"].MODEL.SPATIAL_ATTENTION is True
    x = model_input(seed=5)
    assert torch.equal(log_rates(loaded, x), log_rates(model, x))


def test_stndt_file_with_out_of_range_positions_is_refused(tmp_path):
    """Verify that STNDT's learned-position buffers are checked too (the OFFSET bug)."""
    path = tmp_path / "offset.pth"
    write_stndt(path, tiny_model(stndt_cfg()), stndt_file_config())
    data = read_checkpoint(path)
    data["state_dict"]["spatial_pos_encoder.pe"] += 1
    torch.save(data, path)
    with pytest.raises(ValueError, match="spatial_pos_encoder"):
        load_model(path)


def test_malicious_stndt_layout_is_refused_without_executing(tmp_path):
    """Verify that a file laid out as STNDT's (best_cobps, spatial_* weights) whose pickle
    names os.system is refused by the allow-list and never runs."""
    marker = tmp_path / "pwned"
    model = tiny_model(stndt_cfg())
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "config": stndt_file_config(),
                "best_cobps": {"value": SystemCall(marker), "update": 1},
                "num_neurons": 7, "trial_length": 13, "max_spikes": 6}, path)
    for load in (read_checkpoint, load_model):
        with pytest.raises(UnsafeCheckpointError, match="system"):
            load(path)
        assert not marker.exists()
