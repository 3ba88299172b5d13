"""The typed views of a config: built in one place, refusing what is not implemented."""

from __future__ import annotations

import dataclasses

import pytest

from nlb_ndt.config.defaults import get_cfg_defaults, load_config
from nlb_ndt.config.render import TEMPLATE_DIR, template_names
from nlb_ndt.config.typed import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    model_family,
    typed_config,
)


def test_defaults_give_the_dataclass_defaults():
    """Verify that the yacs defaults and the dataclasses' own defaults agree, so code that
    builds a config by hand gets what a run would."""
    typed = typed_config(get_cfg_defaults())
    assert typed.train == TrainConfig()
    assert typed.data == DataConfig()
    assert typed.model == ModelConfig()
    assert typed.run.seed == get_cfg_defaults().SEED


@pytest.mark.parametrize("name", template_names())
def test_every_template_builds_its_typed_config(name):
    """Verify that each shipped template's settings are accepted by the typed builders."""
    typed = typed_config(load_config(TEMPLATE_DIR / f"{name}.yaml"))
    assert typed.train.stop_epoch <= typed.train.num_updates
    assert dataclasses.is_dataclass(typed.model)


def test_stop_epoch_is_the_earlier_of_num_updates_and_stop_at_epoch():
    """Verify the one stop-epoch rule (a refit stops at its member's epoch)."""
    assert TrainConfig(num_updates=100).stop_epoch == 100
    assert TrainConfig(num_updates=100, stop_at_epoch=30).stop_epoch == 30
    assert TrainConfig(num_updates=100, stop_at_epoch=300).stop_epoch == 100


@pytest.mark.parametrize("opts, match", [
    (["DATA.TRAIN_SPLITS", "val"], "TRAIN_SPLITS"),
    (["TRAIN.VAL_INTERVAL", 0], "VAL_INTERVAL"),
    (["TRAIN.LR.SCHEDULER", "step"], "cosine or invsqrt"),
    (["TRAIN.MASK_MODE", "neuron"], "timestep"),
    (["MODEL.FAMILY", "rnn"], "MODEL.FAMILY"),
])
def test_bad_settings_are_refused_naming_the_key(opts, match):
    """Verify that settings the code cannot honour fail when the typed config is built."""
    with pytest.raises((ValueError, NotImplementedError), match=match):
        cfg = load_config(opts=opts)
        model_family(cfg.MODEL)
        typed_config(cfg)


def test_model_family_of_old_and_new_configs():
    """Verify that a MODEL node without FAMILY is an NDT, and that spatial attention makes
    an STNDT."""
    cfg = get_cfg_defaults()
    assert model_family(cfg.MODEL) == "ndt"
    cfg.MODEL.SPATIAL_ATTENTION = True
    assert model_family(cfg.MODEL) == "stndt"
    assert model_family({"NUM_LAYERS": 2}) == "ndt"
