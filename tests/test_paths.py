"""Directory resolution from the environment: defaults under NLB_HOME, overrides, as_env."""

from __future__ import annotations

from pathlib import Path

from nlb_ndt.paths import PATH_VARIABLES, UNUSED_VARIABLES, get_paths

DEFAULTS = {
    "data_raw": "raw",
    "ndt_cache_dir": "neural-data-transformer",
    "ray_tune_home": "ray_results/neural-data-transformer",
    "checkpoint_dir": "checkpoints",
    "config_dir": "configs",
    "submission_validation_root": "submission-validation",
}


def test_every_directory_defaults_under_nlb_home(tmp_path):
    """Verify each directory's default below NLB_HOME, and the derived paths."""
    paths = get_paths({"NLB_HOME": str(tmp_path)})
    assert paths.nlb_home == tmp_path.resolve()
    for attr, rel in DEFAULTS.items():
        assert getattr(paths, attr) == tmp_path.resolve() / rel, attr
    assert paths.submissions_dir == tmp_path.resolve() / "submissions"
    assert paths.eval_data_test == tmp_path.resolve() / "raw" / "eval_data_test.h5"
    assert not (tmp_path / "raw").exists()  # resolving never creates a directory


def test_nlb_home_defaults_to_home_folder_and_empty_values_count_as_unset(tmp_path):
    """Verify the ~/nlb_2021 default, and that an empty variable falls back to its default."""
    assert get_paths({}).nlb_home == (Path.home() / "nlb_2021").resolve()
    paths = get_paths({"NLB_HOME": str(tmp_path), "CONFIG_DIR": ""})
    assert paths.config_dir == tmp_path.resolve() / "configs"


def test_variables_override_and_expand(tmp_path, monkeypatch):
    """Verify that one variable moves one directory, with ~ and $VARS expanded; relative
    values resolve against the working directory."""
    monkeypatch.setenv("SOMEWHERE", str(tmp_path / "w"))
    monkeypatch.chdir(tmp_path)
    paths = get_paths({"NLB_HOME": str(tmp_path / "h"), "NLB_DATA_RAW": "$SOMEWHERE/raw",
                       "CHECKPOINT_DIR": "~/ck", "CONFIG_DIR": "rel/cfg"})
    assert paths.data_raw == tmp_path.resolve() / "w" / "raw"
    assert paths.checkpoint_dir == (Path.home() / "ck").resolve()
    assert paths.config_dir == tmp_path.resolve() / "rel" / "cfg"
    assert paths.ndt_cache_dir == tmp_path.resolve() / "h" / "neural-data-transformer"


def test_process_environment_is_the_default_source(tmp_path, monkeypatch):
    """Verify that get_paths() reads os.environ when called (not at import)."""
    for var in PATH_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(tmp_path))
    monkeypatch.setenv("RAY_TUNE_HOME", str(tmp_path / "ray"))
    paths = get_paths()
    assert paths.nlb_home == tmp_path.resolve()
    assert paths.ray_tune_home == tmp_path.resolve() / "ray"


def test_as_env_round_trips_and_names_every_variable(tmp_path):
    """Verify that as_env() names every used variable of PATH_VARIABLES and reproduces the
    same Paths."""
    paths = get_paths({"NLB_HOME": str(tmp_path), "NDT_CACHE_DIR": str(tmp_path / "x")})
    env = paths.as_env()
    assert tuple(env) == tuple(v for v in PATH_VARIABLES if v not in UNUSED_VARIABLES)
    assert env["NDT_CACHE_DIR"] == str(tmp_path.resolve() / "x")
    assert get_paths(env) == paths


def test_the_originals_unused_cache_variable_is_accepted_and_cleared(tmp_path):
    """Verify that NLB_CACHE_DIR (the original's nlb_tools cache, unused here) changes no
    path and is among the variables an isolated run clears."""
    base = get_paths({"NLB_HOME": str(tmp_path)})
    assert get_paths({"NLB_HOME": str(tmp_path), "NLB_CACHE_DIR": "/elsewhere"}) == base
    assert set(UNUSED_VARIABLES) <= set(PATH_VARIABLES)
