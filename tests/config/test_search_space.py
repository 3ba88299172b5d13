"""Search-space JSON: the original's schema, the seven datasets' spaces, and rejection of
anything outside the schema (naming the key and the file)."""

from __future__ import annotations

import json

import pytest

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.config.render import TEMPLATE_DIR, template_names
from nlb_ndt.config.search_space import (
    Dimension,
    SearchSpaceError,
    load_search_space,
    parse_search_space,
    to_json,
)

MAZE_FAMILY = ("mc_maze", "mc_rtt", "mc_maze_large", "mc_maze_medium", "mc_maze_small")


def _write(tmp_path, data, name="space.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_search_space_every_template_loads():
    """Verify that every template's search space loads, and that the original's default
    dimensions (weight decay, mask ratio) are explicit in each of the seven datasets'."""
    names = template_names()
    assert len(names) == 8 and "synthetic" in names
    for name in names:
        if name == "synthetic":  # its own small-data space: stronger weight decay, more masking
            dims = load_search_space(TEMPLATE_DIR / f"{name}.json")
            assert dims["TRAIN.WEIGHT_DECAY"].high == 1.0 and dims["TRAIN.MASK_RATIO"].high == 0.5
            continue
        dims = load_search_space(TEMPLATE_DIR / f"{name}.json")
        assert dims["TRAIN.WEIGHT_DECAY"] == Dimension("TRAIN.WEIGHT_DECAY", "loguniform",
                                                       1e-8, 1e-3)
        assert dims["TRAIN.MASK_RATIO"] == Dimension("TRAIN.MASK_RATIO", "uniform", 0.1, 0.4)


def test_search_space_matches_original_spaces():
    """Verify the dimension counts and the per-dataset differences of the original's
    spaces (12 dimensions; area2_bump 11 without warmup; dmfc's wider context)."""
    maze = load_search_space(TEMPLATE_DIR / "mc_maze.json")
    dmfc = load_search_space(TEMPLATE_DIR / "dmfc_rsg.json")
    area2 = load_search_space(TEMPLATE_DIR / "area2_bump.json")
    assert (len(maze), len(dmfc), len(area2)) == (12, 12, 11)
    assert "TRAIN.LR.WARMUP" not in area2
    assert maze["TRAIN.LR.WARMUP"] == Dimension("TRAIN.LR.WARMUP", "randint", 0, 2000)
    assert maze["TRAIN.LR.INIT"] == Dimension("TRAIN.LR.INIT", "uniform", 1e-5, 5e-3)
    assert maze["MODEL.CONTEXT_FORWARD"] == Dimension("MODEL.CONTEXT_FORWARD", "randint",
                                                      10, 100)
    assert dmfc["MODEL.CONTEXT_BACKWARD"] == Dimension("MODEL.CONTEXT_BACKWARD", "randint",
                                                       40, 240)
    assert area2["MODEL.CONTEXT_FORWARD"].low == 4
    assert area2["MODEL.DROPOUT"] == Dimension("MODEL.DROPOUT", "uniform", 0.2, 0.6)
    assert area2["TRAIN.MASK_MAX_SPAN"] == Dimension("TRAIN.MASK_MAX_SPAN", "randint", 1, 5)
    assert maze["TRAIN.MASK_TOKEN_RATIO"].sample_fn == "loguniform"
    assert dmfc["TRAIN.MASK_RANDOM_RATIO"].low == 0.9
    assert maze["TRAIN.MASK_RANDOM_RATIO"].low == 0.8


def test_search_space_maze_family_identical():
    """Verify that the five maze-family spaces are still identical (as the original's),
    so an edit to one of them cannot drift silently."""
    texts = {name: (TEMPLATE_DIR / f"{name}.json").read_text() for name in MAZE_FAMILY}
    assert len(set(texts.values())) == 1, f"maze-family search spaces differ: {sorted(texts)}"


def test_search_space_unknown_key_rejected(tmp_path):
    """Verify that a key that is not a config key is rejected, naming key and file."""
    path = _write(tmp_path, {"MODEL.DROPOUTT": {"low": 0.1, "high": 0.2}})
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    assert "MODEL.DROPOUTT" in str(err.value) and str(path) in str(err.value)
    # A section name is not a leaf key either.
    with pytest.raises(SearchSpaceError, match="unknown config key"):
        parse_search_space({"TRAIN.LR": {"low": 0.1, "high": 0.2}}, get_cfg_defaults())


def test_search_space_unknown_field_rejected(tmp_path):
    """Verify that a field outside the schema is rejected, naming field, key and file."""
    path = _write(tmp_path, {"TRAIN.MASK_RATIO": {"low": 0.1, "hihg": 0.4}})
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(path)
    message = str(err.value)
    assert "hihg" in message and "TRAIN.MASK_RATIO" in message and str(path) in message


def test_search_space_legacy_fields_ignored():
    """Verify that the original's PBT leftovers are accepted and ignored, and that a
    missing sample_fn means uniform, as in the original."""
    dims = parse_search_space({"TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4, "explore_wt": 0.3,
                                                    "enforce_limits": True,
                                                    "is_integer": False}},
                              get_cfg_defaults())
    assert dims["TRAIN.MASK_RATIO"] == Dimension("TRAIN.MASK_RATIO", "uniform", 0.1, 0.4)


def test_search_space_randint_excludes_high():
    """Verify that randint covers low..high-1, as ray.tune.randint did."""
    dim = parse_search_space({"TRAIN.MASK_MAX_SPAN": {"low": 1, "high": 3,
                                                      "sample_fn": "randint"}},
                             get_cfg_defaults())["TRAIN.MASK_MAX_SPAN"]
    assert [v for v in range(-1, 6) if dim.contains(v)] == [1, 2]
    with pytest.raises(SearchSpaceError, match="must exceed low"):
        parse_search_space({"TRAIN.MASK_MAX_SPAN": {"low": 3, "high": 3,
                                                    "sample_fn": "randint"}},
                           get_cfg_defaults())


def test_search_space_choice_from_opts():
    """Verify that "opts" makes a categorical dimension, with float options converted
    for float keys and a JSON round trip."""
    cfg = get_cfg_defaults()
    dims = parse_search_space({"TRAIN.MASK_MAX_SPAN": {"opts": [1, 2, 4]},
                               "MODEL.DROPOUT": {"opts": [0, 0.5], "sample_fn": "choice"},
                               "MODEL.ACTIVATION": {"opts": ["relu", "gelu"]}}, cfg)
    assert dims["TRAIN.MASK_MAX_SPAN"].opts == (1, 2, 4)
    assert dims["MODEL.DROPOUT"].opts == (0.0, 0.5)
    assert all(isinstance(v, float) for v in dims["MODEL.DROPOUT"].opts)
    assert parse_search_space(to_json(dims), cfg) == dims


@pytest.mark.parametrize("entry, message", [
    ({"TRAIN.LR.WARMUP": {"low": 0, "high": 10}}, "randint"),  # uniform on an int key
    ({"TRAIN.WEIGHT_DECAY": {"low": 0, "high": 1e-3, "sample_fn": "loguniform"}}, "low > 0"),
    ({"TRAIN.MASK_RATIO": {"low": 0.4, "high": 0.1}}, "must exceed"),
    ({"TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4, "sample_fn": "normal"}}, "sample_fn"),
    ({"TRAIN.MASK_RATIO": {"low": 0.1}}, "both"),
    ({"TRAIN.MASK_MAX_SPAN": {"opts": [1, "2"]}}, "type"),
    ({"TRAIN.MASK_MAX_SPAN": {"opts": []}}, "non-empty"),
    ({"TRAIN.MASK_MAX_SPAN": {"low": 1.5, "high": 4, "sample_fn": "randint"}}, "integers"),
    ({"MODEL.ACTIVATION": {"low": 0, "high": 1}}, "opts"),
    ({"TRAIN.MASK_RATIO": 0.25}, "object"),
])
def test_search_space_bad_entries_rejected(entry, message):
    """Verify that entries that cannot produce valid values are rejected with a reason."""
    with pytest.raises(SearchSpaceError, match=message) as err:
        parse_search_space(entry, get_cfg_defaults(), "my.json")
    assert str(err.value).startswith("my.json: ")


def test_search_space_bad_file_reports_path(tmp_path):
    """Verify that a missing or malformed file is reported with its path."""
    with pytest.raises(SearchSpaceError, match="generate_all_configs"):
        load_search_space(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SearchSpaceError, match="not valid JSON") as err:
        load_search_space(bad)
    assert str(bad) in str(err.value)
