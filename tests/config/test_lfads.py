"""LFADS's settings: the yacs section mirrors LfadsConfig, bad values are refused, and the
NLB table holds valid settings."""

from __future__ import annotations

import dataclasses

import pytest

from nlb_ndt.config.defaults import get_cfg_defaults, load_config
from nlb_ndt.config.lfads import NLB_LFADS_SETTINGS, LfadsConfig, lfads_config
from nlb_ndt.datasets import get_spec


def test_defaults_give_the_dataclass_defaults():
    """Verify that the LFADS yacs section builds LfadsConfig() exactly, key for field."""
    node = get_cfg_defaults().LFADS
    assert sorted(node) == sorted(f.name.upper() for f in dataclasses.fields(LfadsConfig))
    assert lfads_config(node) == LfadsConfig()


def test_overrides_reach_the_typed_config():
    """Verify that command-line style overrides are typed and land in their fields."""
    cfg = load_config(opts=["LFADS.GEN_DIM", 64, "LFADS.CELL_CLIP", 2.5,
                            "LFADS.LR_SCHEDULER", True])
    typed = lfads_config(cfg.LFADS)
    assert (typed.gen_dim, typed.cell_clip, typed.lr_scheduler) == (64, 2.5, True)


@pytest.mark.parametrize("changes, match", [
    (dict(gen_dim=-1), "GEN_DIM"), (dict(dropout_rate=1.0), "DROPOUT_RATE"),
    (dict(cd_rate=-0.1), "CD_RATE"), (dict(cell_clip=0.0), "CELL_CLIP"),
    (dict(con_dim=0), "CO_DIM must be 0")])
def test_bad_values_are_refused_naming_the_key(changes, match):
    """Verify that impossible settings raise a ValueError naming the key."""
    with pytest.raises(ValueError, match=match):
        LfadsConfig(**changes)


def test_controller_needs_all_three_dims():
    """Verify that the controller exists only with C, K and U all > 0."""
    assert LfadsConfig().use_controller
    assert not LfadsConfig(ci_enc_dim=0, co_dim=0).use_controller
    assert not LfadsConfig(con_dim=0, co_dim=0).use_controller


def test_nlb_settings_are_valid_and_the_default_is_mc_maze_small():
    """Verify that each dataset's settings build an LfadsConfig, name a real dataset, and
    that the defaults are the mc_maze_small row."""
    for name, row in NLB_LFADS_SETTINGS.items():
        get_spec(name)
        values = {k: v for k, v in row.items() if k not in ("batch_size", "bin_ms")}
        LfadsConfig(**values)
        assert row["bin_ms"] in (5, 20) and row["batch_size"] in (64, 128, 256)
    small = NLB_LFADS_SETTINGS["mc_maze_small"]
    default = LfadsConfig()
    assert all(getattr(default, k) == v for k, v in small.items()
               if k not in ("batch_size", "bin_ms"))
    assert NLB_LFADS_SETTINGS["mc_maze"]["gen_dim"] == 200
    assert NLB_LFADS_SETTINGS["dmfc_rsg"]["l2_gen_scale"] == 3e-3
