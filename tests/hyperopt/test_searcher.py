"""The skopt searcher behind Ray Tune's Searcher API: suggestions, constant liar, seeds,
saved state."""

from __future__ import annotations

import pytest
from yacs.config import CfgNode as CN

from nlb_ndt.config.defaults import load_config
from nlb_ndt.config.render import TEMPLATE_DIR, template_names
from nlb_ndt.config.search_space import load_search_space, parse_search_space
from nlb_ndt.hyperopt.searcher import SkoptSearcher

METRIC = "best_masked_loss"
SPACE = {
    "TRAIN.WEIGHT_DECAY": {"low": 1e-8, "high": 1e-3, "sample_fn": "loguniform"},
    "TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.4},
    "MODEL.CONTEXT_BACKWARD": {"low": 4, "high": 8, "sample_fn": "randint"},
    "TRAIN.MASK_MAX_SPAN": {"opts": [1, 2, 3]},
}


def _dims(space=SPACE):
    return parse_search_space(space, load_config(freeze=False))


def _searcher(seed=0, mode="min", n_initial_points=3, space=SPACE) -> SkoptSearcher:
    return SkoptSearcher(_dims(space), metric=METRIC, mode=mode, seed=seed,
                         n_initial_points=n_initial_points)


def _point(config: dict) -> tuple:
    return tuple(config[key] for key in SPACE)


def _score(config: dict) -> float:
    """A smooth toy objective of the searched values."""
    return (config["TRAIN.MASK_RATIO"] - 0.3) ** 2 + 0.01 * config["MODEL.CONTEXT_BACKWARD"]


def _drive(searcher, n_done: int, n_pending: int) -> list[dict]:
    """Complete `n_done` trials one after another, then leave `n_pending` running."""
    configs = []
    for i in range(n_done):
        configs.append(searcher.suggest(f"done{i}"))
        searcher.on_trial_complete(f"done{i}", {METRIC: _score(configs[-1])})
    for i in range(n_pending):
        configs.append(searcher.suggest(f"run{i}"))
    return configs


def test_searcher_suggestions_are_native_and_in_range():
    """Verify that suggestions hold python ints / floats / options inside the space, plus
    the trial's seed (base seed + trial index)."""
    dims = _dims()
    configs = _drive(_searcher(seed=5), 4, 2)
    for index, config in enumerate(configs):
        assert config["SEED"] == 5 + index and config["TRIAL_INDEX"] == index
        for key, dim in dims.items():
            assert type(config[key]) in (int, float), (key, config)
            assert dim.contains(config[key]), (key, config)


def test_searcher_concurrent_trials_get_distinct_points():
    """Verify that trials running at the same time get distinct points, both during the
    random start and once the surrogate model is used (constant liar)."""
    searcher = _searcher(n_initial_points=3)
    start = [_point(searcher.suggest(f"a{i}")) for i in range(3)]
    assert len(set(start)) == 3
    for i in range(3):
        searcher.on_trial_complete(f"a{i}", {METRIC: float(i)})
    assert searcher.n_told == 3
    # Model phase: four trials pending at once. Without the constant liar, skopt
    # returns the same point until it is told a result.
    model_phase = [_point(searcher.suggest(f"b{i}")) for i in range(4)]
    assert len(set(model_phase)) == 4
    assert not set(model_phase) & set(start)


def test_searcher_reproducible_under_seed():
    """Verify that a seed fixes the first suggestions and another seed changes them."""
    first = [_point(c) for c in _drive(_searcher(seed=11, n_initial_points=3), 4, 1)]
    again = [_point(c) for c in _drive(_searcher(seed=11, n_initial_points=3), 4, 1)]
    other = [_point(c) for c in _drive(_searcher(seed=12, n_initial_points=3), 0, 3)]
    assert first == again
    assert first[:3] != other[:3]


def test_searcher_save_restore_continues(tmp_path):
    """Verify that a restored searcher continues the saved one: same next suggestion
    (model phase, with a pending trial), same trial numbering, and a pending trial's
    result still reaches its optimizer."""
    original = _searcher(seed=3, n_initial_points=3)
    _drive(original, 4, 1)
    path = tmp_path / "searcher.pkl"
    original.save(str(path))
    restored = _searcher(seed=99, n_initial_points=3)  # state, not the constructor, wins
    restored.restore(str(path))
    expected = original.suggest("next")
    got = restored.suggest("next")
    assert got == expected
    assert got["SEED"] == 3 + 5
    restored.on_trial_complete("run0", {METRIC: 0.5})
    assert restored.n_told == 5


def test_searcher_restore_rejects_other_space(tmp_path):
    """Verify that state saved for another search space is refused."""
    searcher = _searcher()
    searcher.save(str(tmp_path / "s.pkl"))
    other = _searcher(space={**SPACE, "TRAIN.MASK_RATIO": {"low": 0.1, "high": 0.5}})
    with pytest.raises(ValueError, match="different search space"):
        other.restore(str(tmp_path / "s.pkl"))


def test_searcher_failed_trial_uses_last_reported_value():
    """Verify that an errored trial is told its last finite objective, one that never
    reported one is dropped, and a maximised objective is negated for skopt."""
    searcher = _searcher(mode="max")
    searcher.suggest("ok")
    searcher.suggest("nan")
    searcher.suggest("silent")
    searcher.on_trial_result("ok", {METRIC: 0.25})
    searcher.on_trial_result("nan", {METRIC: 0.2})
    searcher.on_trial_result("nan", {METRIC: float("nan")})
    searcher.on_trial_complete("ok", {METRIC: 0.3})
    searcher.on_trial_complete("nan", None, error=True)
    searcher.on_trial_complete("silent", None, error=True)
    assert searcher.n_told == 2
    assert sorted(searcher.get_state()["yi"]) == [-0.3, -0.2]


def test_searcher_points_merge_into_every_template():
    """Verify that suggestions from every template's space merge into its config with
    yacs' own type-strict merge (no coercion)."""
    for name in template_names():
        cfg = load_config(TEMPLATE_DIR / f"{name}.yaml", freeze=False)
        dims = load_search_space(TEMPLATE_DIR / f"{name}.json", cfg)
        searcher = SkoptSearcher(dims, metric=METRIC, mode="min", seed=0)
        for i in range(3):
            config = searcher.suggest(str(i))
            nested: dict = {}
            for key, value in config.items():
                if key == "TRIAL_INDEX":
                    continue
                node = nested
                *parents, leaf = key.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = value
            merged = cfg.clone()
            merged.merge_from_other_cfg(CN(nested))
            assert merged.SEED == i


def test_searcher_rebuilds_an_unreadable_optimizer_from_its_observations(tmp_path, caplog):
    """Verify that when the pickled skopt optimizer cannot be loaded (as after a library
    upgrade), the restored searcher rebuilds it from the saved space, seed and observations,
    says so in one line, and its next suggestions are told every earlier observation."""
    import logging
    import pickle

    searcher = _searcher(seed=3)
    configs = _drive(searcher, n_done=5, n_pending=0)
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    state = pickle.loads(path.read_bytes())
    state["optimizer_pickle"] = b"\x80\x04not an optimizer"  # unreadable, like a new skopt
    path.write_bytes(pickle.dumps(state))

    restored = _searcher(seed=3)
    with caplog.at_level(logging.WARNING):
        restored.restore(str(path))
    assert len([r for r in caplog.records if "rebuilding it" in r.message]) == 1
    assert restored.n_told == 5
    assert sorted(restored._opt.yi) == sorted(_score(c) for c in configs)
    more = _drive(restored, n_done=3, n_pending=1)
    dims = _dims()
    for config in more:
        for key, dim in dims.items():
            value = config[key]
            assert dim.low <= value <= dim.high if dim.sample_fn != "choice" else \
                value in dim.opts
    assert restored.n_told == 8


def test_searcher_pickled_by_ray_survives_an_unreadable_optimizer():
    """Verify that the searcher object Ray pickles into tuner.pkl carries its optimizer as
    bytes beside the observations, so a broken optimizer pickle rebuilds instead of failing."""
    import pickle

    searcher = _searcher(seed=1)
    _drive(searcher, n_done=4, n_pending=0)
    fields = searcher.__getstate__()
    assert isinstance(fields["_opt"]["optimizer_pickle"], bytes)
    fields["_opt"]["optimizer_pickle"] = b"broken"
    clone = SkoptSearcher.__new__(SkoptSearcher)
    clone.__setstate__(fields)
    assert clone.n_told == 4 and clone.suggest("next") is not None
    again = pickle.loads(pickle.dumps(searcher))
    assert again.n_told == 4 and again._opt.Xi == searcher._opt.Xi
