"""The model factory: MODEL.FAMILY chooses the model a config builds."""

from __future__ import annotations

import pytest

from nlb_ndt.config.defaults import load_config
from nlb_ndt.model.factory import build_model
from nlb_ndt.model.ndt import NDT


def test_factory_builds_the_ndt_by_default():
    """Verify that the default family is the NDT, with the given dimensions."""
    cfg = load_config(opts=["MODEL.NUM_LAYERS", 1, "MODEL.HIDDEN_SIZE", 8])
    model = build_model(cfg, num_neurons=6, trial_length=11, max_spikes=5)
    assert isinstance(model, NDT)
    assert (model.num_neurons, model.trial_length, model.max_spikes) == (6, 11, 5)


def test_factory_refuses_an_unknown_family():
    """Verify that a family name outside MODEL_FAMILIES is refused, naming the key."""
    cfg = load_config(freeze=False)
    cfg.MODEL.FAMILY = "rnn"
    with pytest.raises(ValueError, match="MODEL.FAMILY"):
        build_model(cfg, num_neurons=6, trial_length=11, max_spikes=5)
