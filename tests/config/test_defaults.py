"""Config merging rules: type coercion, dotted overrides, and warnings for inert keys."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from nlb_ndt.config.defaults import (
    ADDED_KEYS,
    INERT_KEYS,
    apply_overrides,
    coerce_to_default,
    config_value,
    flatten,
    get_cfg_defaults,
    inert_settings,
    load_config,
    warn_inert_settings,
)
from nlb_ndt.datasets import get_spec


def test_int_key_takes_whole_numbers_only():
    """Verify that an int key takes 3 and 3.0 (as int 3) but not 3.5, True or a string."""
    assert coerce_to_default(3, 1) == 3
    value = coerce_to_default(3.0, 1)
    assert value == 3 and type(value) is int
    for bad in (3.5, True, "3"):
        with pytest.raises(TypeError, match=r"K=.* does not fit the type of its default 1 \(int\)"):
            coerce_to_default(bad, 1, key="K")


def test_float_and_bool_keys():
    """Verify that a float key takes an int (as float), and a bool key only a bool."""
    value = coerce_to_default(2, 0.5)
    assert value == 2.0 and type(value) is float
    with pytest.raises(TypeError):
        coerce_to_default(False, 0.5)
    assert coerce_to_default(True, False) is True
    for bad in (1, 0.0, "yes"):
        with pytest.raises(TypeError, match="bool"):
            coerce_to_default(bad, False)


def test_numpy_scalars_tensors_and_sequences_are_converted():
    """Verify numpy scalars and 0-d tensors become native numbers; lists fit tuples."""
    value = coerce_to_default(np.int64(4), 1)
    assert value == 4 and type(value) is int
    value = coerce_to_default(np.float32(0.25), 1.0)
    assert value == 0.25 and type(value) is float
    assert coerce_to_default(np.bool_(True), False) is True
    assert coerce_to_default(torch.tensor(7), 1) == 7
    with pytest.raises(TypeError):
        coerce_to_default(np.float64(2.5), 1)
    assert coerce_to_default([1, 2], (0,)) == (1, 2)
    assert coerce_to_default("gelu", "relu") == "gelu"
    with pytest.raises(TypeError):
        coerce_to_default(1, "relu")


def test_apply_overrides_copies_coerces_and_refuses_unknown_keys():
    """Verify dotted overrides are coerced into a copy (the input untouched), and that
    unknown keys or a key naming a whole node raise KeyError."""
    cfg = get_cfg_defaults()
    cfg.freeze()
    out = apply_overrides(cfg, {"TRAIN.LR.INIT": np.float64(0.004), "MODEL.NUM_LAYERS": 3.0})
    assert out.TRAIN.LR.INIT == 0.004 and type(out.MODEL.NUM_LAYERS) is int
    assert cfg.TRAIN.LR.INIT == 1e-3 and cfg.MODEL.NUM_LAYERS == 6
    for bad in ("TRAIN.LR.NOPE", "NOPE.INIT", "TRAIN.LR"):
        with pytest.raises(KeyError, match=bad):
            apply_overrides(cfg, {bad: 1})
    with pytest.raises(TypeError, match="MODEL.NUM_LAYERS"):
        apply_overrides(cfg, {"MODEL.NUM_LAYERS": 2.5})


def test_flatten_and_config_value():
    """Verify nested -> dotted keys, and that config_value reads them back or raises."""
    cfg = get_cfg_defaults()
    flat = flatten(cfg)
    assert flat["TRAIN.LR.INIT"] == 1e-3 and "TRAIN.LR" not in flat
    assert all(config_value(cfg, key) == value for key, value in flat.items())
    with pytest.raises(KeyError, match="TRAIN.LR.INIT.X"):
        config_value(cfg, "TRAIN.LR.INIT.X")


def test_load_config_names_file_of_an_unknown_key(tmp_path):
    """Verify that an unknown key in a YAML file raises KeyError naming the file."""
    good = tmp_path / "good.yaml"
    good.write_text("MODEL:\n  NUM_LAYERS: 2\n")
    cfg = load_config(good, ["TRAIN.BATCH_SIZE", 8])
    assert cfg.MODEL.NUM_LAYERS == 2 and cfg.TRAIN.BATCH_SIZE == 8 and cfg.is_frozen()
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  NUM_LAYER: 2\n")
    with pytest.raises(KeyError, match="bad.yaml"):
        load_config([good, bad])


def test_inert_settings_one_message_per_key():
    """Verify that SYSTEM.NUM_GPUS=4 and TRAIN.TUNE_METRIC='x' give one message each,
    naming the key, and that defaults give none."""
    cfg = get_cfg_defaults()
    assert inert_settings(cfg) == []
    cfg.SYSTEM.NUM_GPUS, cfg.TRAIN.TUNE_METRIC = 4, "x"
    messages = inert_settings(cfg)
    assert len(messages) == 2
    assert sum("SYSTEM.NUM_GPUS=4" in m for m in messages) == 1
    assert sum("TRAIN.TUNE_METRIC='x'" in m for m in messages) == 1
    assert all("has no effect" in m for m in messages)


def test_inert_settings_accepts_what_generate_all_configs_writes(tmp_path):
    """Verify that DATA.DATAPATH equal to the tensor cache and the dataset's own cache file
    names give no message, while other values do."""
    cfg = get_cfg_defaults()
    group = get_spec(cfg.DATA.DATASET).group(cfg.DATA.BIN_MS)
    cfg.DATA.DATAPATH = str(tmp_path / "ndt") + "/"
    cfg.DATA.TRAIN_FILENAME = cfg.DATA.VAL_FILENAME = f"{group}_train.h5"
    cfg.DATA.TEST_FILENAME = f"{group}_test.h5"
    assert inert_settings(cfg, ndt_cache_dir=tmp_path / "ndt") == []
    (message,) = inert_settings(cfg, ndt_cache_dir=tmp_path / "other")
    assert message.startswith("DATA.DATAPATH=")
    cfg.DATA.TEST_FILENAME = "mine.h5"
    assert [m.split("=")[0] for m in inert_settings(cfg, ndt_cache_dir=tmp_path / "ndt")] == \
        ["DATA.TEST_FILENAME"]


def test_inert_and_added_keys_exist_in_defaults():
    """Verify that every ADDED_KEYS and INERT_KEYS entry names a real default key."""
    defaults = get_cfg_defaults()
    for key in (*ADDED_KEYS, *INERT_KEYS):
        config_value(defaults, key)  # raises KeyError for a missing key
    assert len(set(ADDED_KEYS)) == len(ADDED_KEYS)
    assert not set(ADDED_KEYS) & set(INERT_KEYS)


def test_warn_inert_settings_logs_one_warning_per_key(caplog):
    """Verify one WARNING record per inert key set, holding that key's message."""
    cfg = get_cfg_defaults()
    cfg.SYSTEM.NUM_GPUS, cfg.MODEL.SPIKE_LOG_INIT = 2, True
    with caplog.at_level(logging.WARNING, logger="nlb_ndt.config.defaults"):
        messages = warn_inert_settings(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == messages and len(warnings) == 2
    assert any("SYSTEM.NUM_GPUS" in w for w in warnings)
    assert any("MODEL.SPIKE_LOG_INIT" in w for w in warnings)
