"""The import paths that users' scripts and old experiments rely on, whatever the layout."""

from __future__ import annotations

import pickle
import subprocess
import sys

from helpers import ROOT


def test_public_functions_keep_their_import_paths():
    """Verify that `nlb_ndt.checkpoint.load_model` / `save_checkpoint` and
    `nlb_ndt.inference.predict_rates` / `ensemble_rates` are the library's own functions."""
    from nlb_ndt import checkpoint, inference
    from nlb_ndt.model import checkpoint as model_checkpoint
    from nlb_ndt.model import inference as model_inference
    from nlb_ndt.scoring import ensemble

    assert checkpoint.load_model is model_checkpoint.load_model
    assert checkpoint.save_checkpoint is model_checkpoint.save_checkpoint
    assert inference.predict_rates is model_inference.predict_rates
    assert inference.ensemble_rates is ensemble.ensemble_rates


def test_what_ray_pickles_into_an_experiment_keeps_its_import_path():
    """Verify that the searcher, the sample budget and the trainable that Ray pickles into
    every experiment's state unpickle by their recorded names (old experiments resume)."""
    from nlb_ndt.hyperopt.searcher import SampleBudget, SkoptSearcher
    from nlb_ndt.hyperopt.trainable import run_trial

    for obj, name in ((SkoptSearcher, "nlb_ndt.hyperopt.searcher.SkoptSearcher"),
                      (SampleBudget, "nlb_ndt.hyperopt.searcher.SampleBudget"),
                      (run_trial, "nlb_ndt.hyperopt.trainable.run_trial")):
        assert f"{obj.__module__}.{obj.__qualname__}" == name
        assert pickle.loads(pickle.dumps(obj)) is obj


def test_synthetic_module_still_runs_as_a_script(tmp_path):
    """Verify that `python -m nlb_ndt.synthetic --help` (the documented entry point) works."""
    out = subprocess.run([sys.executable, "-m", "nlb_ndt.synthetic", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--like" in out.stdout


def test_classes_pickled_under_their_version_0_1_paths_still_unpickle():
    """Verify that a search-space Dimension pickled under its version-0.1 module path
    (nlb_ndt.search_space, as in every tuner.pkl of that version) loads as today's class."""
    from nlb_ndt.config.search_space import Dimension

    dim = Dimension(key="TRAIN.MASK_RATIO", sample_fn="uniform", low=0.1, high=0.4)
    old = pickle.dumps(dim, protocol=2).replace(b"nlb_ndt.config.search_space",
                                                b"nlb_ndt.search_space")
    assert b"cnlb_ndt.search_space" in old
    assert pickle.loads(old) == dim
