"""Config templates and their rendering into CONFIG_DIR (generate_all_configs.py)."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ROOT
from yacs.config import CfgNode as CN

from nlb_ndt.config.defaults import get_cfg_defaults, load_config
from nlb_ndt.config.render import TEMPLATE_DIR, generate_configs, render_config, template_names
from nlb_ndt.datasets import DATASET_NAMES, get_spec
from nlb_ndt.paths import get_paths

# The original's fixed per-dataset settings (from its released configs):
# (EMBED_DIM, NUM_LAYERS, LR.WARMUP, PATIENCE, NUM_UPDATES, span ramp start, end).
ORIGINAL = {
    "mc_maze": (0, 4, 5000, 3000, 50501, 8000, 12000),
    "mc_rtt": (0, 4, 5000, 3000, 50501, 8000, 12000),
    "area2_bump": (2, 4, 5000, 2500, 40001, 600, 1200),
    "dmfc_rsg": (0, 6, 5000, 4000, 50501, 8000, 12000),
    "mc_maze_large": (0, 4, 5000, 3000, 50501, 8000, 12000),
    "mc_maze_medium": (0, 4, 5000, 3000, 50501, 8000, 12000),
    "mc_maze_small": (0, 4, 2000, 2000, 50501, 5000, 10000),
}


def _paths(tmp_path):
    return get_paths({"NLB_HOME": str(tmp_path / "home")})


def _strict_merge(text: str) -> CN:
    """Merge YAML into the defaults with yacs' own type-strict rules (no coercion)."""
    cfg = get_cfg_defaults()
    cfg.merge_from_other_cfg(CN(yaml.safe_load(text)))
    return cfg


def test_configs_every_template_loads():
    """Verify that every template merges into the defaults (strict yacs types, no
    unknown keys) and names its dataset, bin size and training files correctly."""
    assert set(template_names()) == set(DATASET_NAMES) | {"synthetic"}
    for name in template_names():
        path = TEMPLATE_DIR / f"{name}.yaml"
        cfg = load_config(path)
        assert cfg.is_frozen()
        strict = _strict_merge(path.read_text())
        assert strict == cfg
        spec = get_spec(cfg.DATA.DATASET)
        group = spec.group(cfg.DATA.BIN_MS)
        assert cfg.DATA.TRAIN_FILENAME == f"{group}_train.h5"  # fixes mc_maze.h5 / mc_rtt.h5
        assert cfg.DATA.VAL_FILENAME == cfg.DATA.TRAIN_FILENAME
        assert cfg.DATA.TEST_FILENAME == f"{group}_test.h5"
        if name != "synthetic":
            assert (cfg.DATA.DATASET, cfg.DATA.BIN_MS) == (name, 5)


def test_configs_file_names_match_preprocess(tmp_path):
    """Verify that the templates' file names are the ones the data stage writes."""
    preprocess = pytest.importorskip("nlb_ndt.data.preprocess")
    paths = _paths(tmp_path)
    for name in template_names():
        cfg = load_config(TEMPLATE_DIR / f"{name}.yaml")
        kwargs = dict(bin_ms=cfg.DATA.BIN_MS, paths=paths)
        assert preprocess.tensor_path(cfg.DATA.DATASET, phase="val", **kwargs).name == \
            cfg.DATA.TRAIN_FILENAME
        assert preprocess.tensor_path(cfg.DATA.DATASET, phase="test", **kwargs).name == \
            cfg.DATA.TEST_FILENAME


def test_configs_original_fixed_settings():
    """Verify the original's per-dataset fixed settings and the shared ones."""
    for name, expected in ORIGINAL.items():
        cfg = load_config(TEMPLATE_DIR / f"{name}.yaml")
        got = (cfg.MODEL.EMBED_DIM, cfg.MODEL.NUM_LAYERS, cfg.TRAIN.LR.WARMUP,
               cfg.TRAIN.PATIENCE, cfg.TRAIN.NUM_UPDATES, cfg.TRAIN.MASK_SPAN_RAMP_START,
               cfg.TRAIN.MASK_SPAN_RAMP_END)
        assert got == expected, name
        assert cfg.MODEL.TRIAL_LENGTH == 0 and cfg.MODEL.LEARNABLE_POSITION
        assert cfg.MODEL.PRE_NORM and cfg.MODEL.FIXUP_INIT and cfg.MODEL.LOGRATE
        assert (cfg.TRAIN.WEIGHT_DECAY, cfg.TRAIN.MASK_RATIO) == (5e-5, 0.25)
        assert (cfg.TRAIN.LOG_INTERVAL, cfg.TRAIN.VAL_INTERVAL,
                cfg.TRAIN.CHECKPOINT_INTERVAL) == (200, 20, 1000)
        assert (cfg.MODEL.HIDDEN_SIZE, cfg.MODEL.NUM_HEADS,
                cfg.TRAIN.BATCH_SIZE) == (128, 2, 64)


def test_configs_templates_hold_only_differences():
    """Verify that templates only set keys whose value differs from the defaults, apart
    from the data they train on (always explicit) and dmfc's 6 layers (the original's
    table sets it for dmfc alone), and area2's 2-dim count embedding (likewise)."""
    explicit = {("dmfc_rsg", "MODEL.NUM_LAYERS"), ("area2_bump", "MODEL.EMBED_DIM")}
    defaults = get_cfg_defaults()

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    for name in template_names():
        for key, value in leaves(yaml.safe_load((TEMPLATE_DIR / f"{name}.yaml").read_text())):
            node = defaults
            for part in key.split("."):
                node = node[part]
            if key.startswith("DATA.") or (name, key) in explicit:
                continue
            assert node != value, f"{name}: {key} is the default"


def test_configs_synthetic_is_small_and_fast():
    """Verify that the synthetic template trains a small model quickly on the
    mc_maze_small-shaped synthetic data."""
    cfg = load_config(TEMPLATE_DIR / "synthetic.yaml")
    assert (cfg.DATA.DATASET, cfg.DATA.BIN_MS) == ("mc_maze_small", 20)
    assert cfg.MODEL.NUM_LAYERS <= 2 and cfg.TRAIN.NUM_UPDATES <= 500
    assert cfg.TRAIN.PATIENCE > cfg.TRAIN.NUM_UPDATES
    assert cfg.TRAIN.NUM_UPDATES % cfg.TRAIN.VAL_INTERVAL == 0


def test_configs_render_fills_paths(tmp_path):
    """Verify that rendering adds this machine's paths and nothing else, and that the
    rendered config still loads with strict yacs types."""
    paths = _paths(tmp_path)
    for name in template_names():
        yaml_text, json_text = render_config(name, paths=paths)
        cfg = _strict_merge(yaml_text)
        assert cfg.DATA.DATAPATH == str(paths.ndt_cache_dir)
        assert cfg.CHECKPOINT_DIR == str(paths.checkpoint_dir)
        assert cfg.TRAIN.TUNE_HP_JSON == str(paths.config_dir / f"{name}.json")
        template = load_config(TEMPLATE_DIR / f"{name}.yaml", freeze=False)
        template.DATA.DATAPATH = cfg.DATA.DATAPATH
        template.CHECKPOINT_DIR = cfg.CHECKPOINT_DIR
        template.TRAIN.TUNE_HP_JSON = cfg.TRAIN.TUNE_HP_JSON
        assert cfg == template
        assert json_text == (TEMPLATE_DIR / f"{name}.json").read_text()


def test_configs_generate_never_overwrites_edits(tmp_path):
    """Verify that generation writes missing files, leaves identical ones, keeps an edited
    one (unless overwrite), and replaces it with overwrite."""
    paths = _paths(tmp_path)
    out = paths.config_dir
    first = dict(generate_configs(["synthetic", "mc_rtt"], out, paths=paths))
    assert set(first.values()) == {"written"} and len(first) == 4
    assert dict(generate_configs(["synthetic"], out, paths=paths)) == {
        out / "synthetic.yaml": "unchanged", out / "synthetic.json": "unchanged"}
    edited = (out / "synthetic.yaml").read_text().replace("NUM_UPDATES: 200", "NUM_UPDATES: 7")
    (out / "synthetic.yaml").write_text(edited)
    report = dict(generate_configs(["synthetic"], out, paths=paths))
    assert report[out / "synthetic.yaml"] == "kept"
    assert (out / "synthetic.yaml").read_text() == edited
    report = dict(generate_configs(["synthetic"], out, overwrite=True, paths=paths))
    assert report == {out / "synthetic.yaml": "overwritten",
                      out / "synthetic.json": "unchanged"}
    assert load_config(out / "synthetic.yaml").TRAIN.NUM_UPDATES == 200


def _templates_copy(tmp_path) -> Path:
    tdir = tmp_path / "templates"
    shutil.copytree(TEMPLATE_DIR, tdir)
    return tdir


def test_configs_bad_yaml_key_rejected(tmp_path):
    """Verify that an unknown key in a template is rejected naming the key and the file,
    and that nothing is written."""
    tdir = _templates_copy(tmp_path)
    bad = tdir / "mc_rtt.yaml"
    bad.write_text(bad.read_text().replace("  PRE_NORM: True", "  PRE_NROM: True"))
    paths = _paths(tmp_path)
    with pytest.raises(KeyError) as err:
        generate_configs(["synthetic", "mc_rtt"], paths.config_dir, paths=paths,
                         template_dir=tdir)
    assert "PRE_NROM" in str(err.value) and str(bad) in str(err.value)
    assert not paths.config_dir.exists()


def test_configs_bad_yaml_type_rejected(tmp_path):
    """Verify that a value of the wrong type (yacs does not coerce) names the file."""
    tdir = _templates_copy(tmp_path)
    bad = tdir / "synthetic.yaml"
    bad.write_text(bad.read_text().replace("NUM_UPDATES: 200", "NUM_UPDATES: 200.5"))
    with pytest.raises(ValueError) as err:
        render_config("synthetic", paths=_paths(tmp_path), template_dir=tdir)
    assert "NUM_UPDATES" in str(err.value) and str(bad) in str(err.value)


def test_configs_bad_json_key_rejected(tmp_path):
    """Verify that an unknown key in a template's search space names the key and file."""
    tdir = _templates_copy(tmp_path)
    bad = tdir / "dmfc_rsg.json"
    bad.write_text(bad.read_text().replace("MODEL.DROPOUT_RATES", "MODEL.DROPOUT_RATE"))
    with pytest.raises(ValueError) as err:
        render_config("dmfc_rsg", paths=_paths(tmp_path), template_dir=tdir)
    assert "MODEL.DROPOUT_RATE" in str(err.value) and str(bad) in str(err.value)


def test_configs_wrong_training_file_rejected(tmp_path):
    """Verify that a template naming a training file the data stage never writes (the
    original's mc_maze.h5 bug) is rejected."""
    tdir = _templates_copy(tmp_path)
    bad = tdir / "mc_maze.yaml"
    bad.write_text(bad.read_text().replace("TRAIN_FILENAME: mc_maze_train.h5",
                                           "TRAIN_FILENAME: mc_maze.h5"))
    with pytest.raises(ValueError, match="mc_maze_train.h5"):
        render_config("mc_maze", paths=_paths(tmp_path), template_dir=tdir)


def test_generate_all_configs_script(tmp_path, monkeypatch, capsys):
    """Verify the script end to end: it renders every template into CONFIG_DIR, exits 0,
    and a second run reports every file unchanged."""
    monkeypatch.setenv("NLB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CONFIG_DIR", str(tmp_path / "cfgs"))
    spec = importlib.util.spec_from_file_location("generate_all_configs",
                                                  ROOT / "generate_all_configs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # The script configures the root logger (onto capsys' stream); undo that afterwards.
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        assert script.main([]) == 0
        assert sorted(p.name for p in (tmp_path / "cfgs").iterdir()) == sorted(
            f"{n}{s}" for n in template_names() for s in (".yaml", ".json"))
        capsys.readouterr()
        assert script.main(["--quiet"]) == 0
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 16 and all(line.endswith("unchanged") for line in lines)
