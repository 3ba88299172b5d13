"""The top-level scripts as a user runs them, and README.md's commands against them.

Every script runs here as a subprocess (`sys.executable script.py ...`) from the repository
root, with every path variable pointed at a temporary NLB_HOME and every download endpoint
at the local fake server (tests/fake_services.py), so nothing here reaches the network.
Full runs of run_hyperopt.py and make_submission.py live in hyperopt/test_search.py and
stages/test_make_submission.py (and the demo); here they get `--help` and their first-run
error.

The README test keeps README.md honest: every `python ...` or `make ...` line in its bash
blocks must name a script or make target listed in COVERED (kept in sync by hand), every
`--flag` it shows must exist in that script's `--help`, and every dataset name must be real.
"""

from __future__ import annotations

import functools
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from fake_services import FakeServices
from helpers import PATH_VARS, ROOT

from nlb_ndt.config.render import template_names
from nlb_ndt.data.download import http as fetch
from nlb_ndt.data.download import sources as download
from nlb_ndt.datasets import DATASET_NAMES, get_spec
from nlb_ndt.paths import get_paths

README = ROOT / "README.md"
#: NLB_HOME and the seven directory variables, as paths.py names them.
ENDPOINT_VARS = ("NLB_DANDI_API_URL", "NLB_ZENODO_API_URL", "NLB_EVAL_DATA_URL")
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: a stray request fails at once

#: Every command README.md may show, and where it is exercised. `python -m pytest` and the
#: make targets run in CI (`make test`); the demo's run is `make demo` itself.
COVERED = {
    "demo.py": "--help here; the full run is `make demo`",
    "download_data.py": "--help and --dry-run here; downloads in data/download/test_sources.py",
    "download_checkpoints.py": "--help and --dry-run here; data/download/test_sources.py",
    "generate_all_configs.py": "here (write, keep an edit, --overwrite); config/test_render.py",
    "train.py": "--help here; runs in stages/test_train_one.py (the loop: test_trainer.py)",
    "run_hyperopt.py": "--help, first-run and argument errors here; searches in "
                       "hyperopt/test_search.py (--profile too), --address in "
                       "hyperopt/test_cluster.py",
    "make_submission.py": "--help and first-run error here; "
                          "stages/test_make_submission.py (greedy, --snapshots), "
                          "stages/test_refit.py (--refit), demo",
    "validate_test_submission.py": "--help here; runs in stages/test_validate_release.py",
    "bench/train_speed.py": "--help here; its runs are the benchmark (bench/RESULTS.md)",
    "bench/validate_memory.py": "--help here; its run is the benchmark (bench/RESULTS.md)",
    "bench/demo_ceiling.py": "--help here; run after `make demo` (approach.md)",
    "bench/snapshot_optimism.py": "--help here; run after `make demo` (approach.md)",
    "bench/trial_startup.py": "--help here; its run is the benchmark (bench/RESULTS.md)",
    "bench/state_write_cost.py": "--help here; its run is the benchmark (bench/RESULTS.md)",
    "-m nlb_ndt.synthetic": "--help here; runs in data/test_synthetic.py",
    "-m pytest": "`make test`",
}
#: The commands whose `--help` is checked (every COVERED entry that has one of ours).
HELP_COMMANDS = tuple(key for key in COVERED if key != "-m pytest")
TOP_LEVEL_SCRIPTS = ("demo.py", "download_data.py", "download_checkpoints.py",
                     "generate_all_configs.py", "train.py", "run_hyperopt.py",
                     "make_submission.py", "validate_test_submission.py")
#: make target -> the covered command its recipe runs.
MAKE_TARGETS = {"test": "-m pytest", "lint": "-m ruff", "demo": "demo.py"}
#: Options each script must keep (the public command lines the README documents).
STABLE_OPTIONS = {
    "download_data.py": ("--datasets", "--version", "--eval-data", "--dry-run"),
    "download_checkpoints.py": ("--dry-run",),
    "generate_all_configs.py": ("--overwrite",),
    "run_hyperopt.py": ("NAME", "--samples", "--seed", "--objective", "--gpus-per-trial",
                        "--cpus-per-trial", "--max-concurrent", "--address", "--smoke-test",
                        "--fresh", "--bin-ms", "--profile", "--scheduler", "--time-budget",
                        "--opts"),
    "make_submission.py": ("NAME", "--phase", "--ensemble-size", "--max-ensemble", "--out",
                           "--overwrite", "--device", "--snapshots", "--ensemble-method",
                           "--refit", "--experiments", "--combine-experiments"),
    "train.py": ("CONFIG_OR_NAME", "--opts", "--out", "--seed", "--device"),
    "validate_test_submission.py": ("DATASET", "SUBMISSION_H5", "--device", "--rtol"),
    "demo.py": ("--home", "--samples", "--concurrent", "--seed", "--compare", "--minutes",
                "--scheduler"),
    "bench/train_speed.py": ("--shape", "--device", "--concurrent"),
    "bench/validate_memory.py": ("--keep", "--device"),
    "bench/demo_ceiling.py": ("--home",),
    "bench/snapshot_optimism.py": ("--home", "--name"),
    "bench/trial_startup.py": ("--trials", "--home"),
    "bench/state_write_cost.py": ("--shape", "--writes", "--device"),
    "-m nlb_ndt.synthetic": ("--out", "--like", "--seed"),
}


def _argv(command: str) -> list[str]:
    """`download_data.py` -> [path]; `-m nlb_ndt.synthetic` -> ["-m", "nlb_ndt.synthetic"]."""
    return command.split() if command.startswith("-m ") else [str(ROOT / command)]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with every path variable under `home`, no real endpoint."""
    env = {k: v for k, v in os.environ.items() if k not in PATH_VARS + ENDPOINT_VARS}
    env.update({"NLB_HOME": str(home), "OMP_NUM_THREADS": "1", "NO_PROXY": "127.0.0.1",
                "NLB_DOWNLOAD_RETRIES": "2", "NLB_DOWNLOAD_BACKOFF_S": "0.01",
                "NLB_DOWNLOAD_TIMEOUT_S": "10", "RAY_USAGE_STATS_ENABLED": "0"})
    env.update({var: UNREACHABLE for var in ENDPOINT_VARS})
    env.update(extra)
    return env


def _run(command: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *_argv(command), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@functools.cache
def _help(command: str) -> subprocess.CompletedProcess:
    """`command --help`, run once per test session (the README test reads it too)."""
    home = Path("/nonexistent/nlb_home_for_help")  # --help must not touch NLB_HOME
    return _run(command, "--help", env=_env(home))


def _has_option(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -- every script's --help


@pytest.mark.parametrize("command", HELP_COMMANDS)
def test_script_help_prints_usage_and_stable_options(command):
    """Verify that `--help` exits 0, prints the script's usage line and lists the options
    the README promises, without a traceback."""
    proc = _help(command)
    assert proc.returncode == 0, proc.stderr
    prog = "synthetic.py" if command.startswith("-m ") else Path(command).name
    assert proc.stdout.startswith(f"usage: {prog} "), proc.stdout[:200]
    missing = [o for o in STABLE_OPTIONS[command] if not _has_option(proc.stdout, o)]
    assert not missing, f"{command} --help lacks {missing}"
    assert "Traceback" not in proc.stderr


def test_help_list_covers_every_top_level_script():
    """Verify that every *.py at the repository root is a script checked here."""
    on_disk = sorted(p.name for p in ROOT.glob("*.py"))
    assert on_disk == sorted(TOP_LEVEL_SCRIPTS)
    assert set(TOP_LEVEL_SCRIPTS) <= set(HELP_COMMANDS)


# -- downloads against the fake DANDI / Zenodo


@pytest.fixture
def fake():
    """A started FakeServices (tests/fake_services.py), stopped after the test."""
    with FakeServices() as services:
        yield services


def _fake_env(fake: FakeServices, home: Path) -> dict[str, str]:
    return _env(home, NLB_DANDI_API_URL=fake.dandi_api_url,
                NLB_ZENODO_API_URL=fake.zenodo_api_url,
                NLB_EVAL_DATA_URL=fake.add_file("/media/eval_data_test.h5", b"x"))


def test_download_data_dry_run_lists_mc_maze_files_with_sizes(fake, tmp_path):
    """Verify that `download_data.py --datasets mc_maze --dry-run` lists both NWB files with
    their sizes from the fake DANDI, exits 0 and fetches and writes nothing."""
    spec = get_spec("mc_maze")
    rng = random.Random(3)
    served = {}
    for rel, size in ((spec.train_file, 12_345), (spec.test_file, 6_789)):
        asset = fake.add_dandi_asset(spec.dandiset_id, spec.version, rel, rng.randbytes(size))
        served[Path(rel).name] = (size, fake.content_path(asset))
    proc = _run("download_data.py", "--datasets", "mc_maze", "--dry-run",
                env=_fake_env(fake, tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, (size, content) in served.items():
        line = next((line for line in lines if name in line), None)
        assert line is not None, proc.stdout
        assert f"{size:,}" in line
        assert not fake.requests_to(content)
    assert lines[-1].startswith("dry run: 2 files,") and "nothing was downloaded" in lines[-1]
    assert fake.requests_to(f"/dandi/api/dandisets/{spec.dandiset_id}/versions/"
                            f"{spec.version}/assets/")
    assert not (tmp_path / "home").exists()


def test_download_data_eval_data_dry_run_lists_ground_truth(fake, tmp_path):
    """Verify that `download_data.py --eval-data --dry-run` plans only eval_data_test.h5 at
    its published size, exits 0, asks DANDI nothing and writes nothing."""
    proc = _run("download_data.py", "--eval-data", "--dry-run",
                env=_fake_env(fake, tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    line = next((line for line in proc.stdout.splitlines() if "eval_data_test.h5" in line),
                None)
    assert line is not None and f"{download.EVAL_DATA_SIZE:,}" in line, proc.stdout
    assert "dry run: 1 file," in proc.stdout
    assert not [seen for seen in fake.log if seen.path.startswith("/dandi/")]
    assert not (tmp_path / "home").exists()


def test_download_checkpoints_dry_run_lists_archive(fake, tmp_path):
    """Verify that `download_checkpoints.py --dry-run` finds the archive in the fake Zenodo
    record, prints it with its size, exits 0 and downloads nothing."""
    data = random.Random(4).randbytes(54_321)
    content = fake.add_zenodo_file(download.CHECKPOINT_RECORD_ID, download.CHECKPOINT_FILE,
                                   data)
    proc = _run("download_checkpoints.py", "--dry-run", env=_fake_env(fake, tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    line = next((line for line in proc.stdout.splitlines()
                 if download.CHECKPOINT_FILE in line), None)
    assert line is not None and f"{len(data):,}" in line, proc.stdout
    assert "nothing was downloaded" in proc.stdout
    record = f"/zenodo/api/records/{download.CHECKPOINT_RECORD_ID}"
    assert any(seen.path.startswith(record) for seen in fake.log)  # it asked the fake
    assert not fake.requests_to(content)
    assert not (tmp_path / "home").exists()


# -- configs


def test_generate_all_configs_writes_then_keeps_an_edited_config(tmp_path):
    """Verify that generate_all_configs.py renders every template into CONFIG_DIR with this
    machine's paths, that a second run keeps an edited config (saying --overwrite would
    replace it), and that --overwrite replaces it."""
    home, config_dir = tmp_path / "home", tmp_path / "cfgs"
    env = _env(home, CONFIG_DIR=str(config_dir))
    first = _run("generate_all_configs.py", env=env)
    assert first.returncode == 0, first.stderr
    names = template_names()
    assert "mc_maze" in names
    assert sorted(p.name for p in config_dir.iterdir()) == sorted(
        f"{n}{ext}" for n in names for ext in (".yaml", ".json"))
    target = config_dir / "mc_maze.yaml"
    rendered = target.read_text()
    assert str(home / "neural-data-transformer") in rendered  # NDT_CACHE_DIR's default
    assert str(config_dir / "mc_maze.json") in rendered  # TRAIN.TUNE_HP_JSON
    assert "NUM_UPDATES: 50501" in rendered
    edited = rendered.replace("NUM_UPDATES: 50501", "NUM_UPDATES: 123")
    target.write_text(edited)

    second = _run("generate_all_configs.py", env=env)
    assert second.returncode == 0, second.stderr
    assert target.read_text() == edited
    status = {line.split()[0]: line.split()[-1] for line in second.stdout.splitlines()}
    assert status[str(target)] == "kept"
    assert status[str(config_dir / "mc_rtt.yaml")] == "unchanged"
    assert "--overwrite" in second.stderr

    third = _run("generate_all_configs.py", "--overwrite", env=env)
    assert third.returncode == 0, third.stderr
    assert target.read_text() == rendered


# -- first-run errors of the long-running scripts (their full runs are tested elsewhere)


@pytest.mark.slow
def test_run_hyperopt_before_configs_fails_in_one_line(tmp_path):
    """Verify that the README's search command, run before generate_all_configs.py, exits 1
    with one line that names the missing config and the command that makes it."""
    home = tmp_path / "home"
    line = _one_line_error(_run("run_hyperopt.py", "mc_maze", "--samples", "100", "--seed",
                                "42", env=_env(home)))
    assert str(home / "configs" / "mc_maze.yaml") in line
    assert "python generate_all_configs.py" in line
    assert not (home / "ray_results").exists()


@pytest.mark.slow
def test_scripts_check_arguments_before_files(tmp_path):
    """Verify that a bad argument is reported before any file is looked at: --samples -3
    with no config rendered yet names --samples; validate_test_submission.py names a
    missing or non-HDF5 submission before looking for checkpoints. One line, exit code
    non-zero, no traceback, nothing written."""
    home = tmp_path / "home"
    proc = _run("run_hyperopt.py", "mc_maze_small", "--samples", "-3", env=_env(home))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--samples" in lines[0] and "at least 1" in lines[0] and "config" not in lines[0]
    line = _one_line_error(_run("validate_test_submission.py", "mc_maze",
                                str(tmp_path / "missing.h5"), env=_env(home)))
    assert "missing.h5 does not exist" in line
    (tmp_path / "notes.h5").write_text("not hdf5")
    line = _one_line_error(_run("validate_test_submission.py", "mc_maze",
                                str(tmp_path / "notes.h5"), env=_env(home)))
    assert "not an HDF5 file" in line and "checkpoint" not in line
    assert not home.exists()


@pytest.mark.slow
def test_make_submission_before_search_fails_in_one_line(tmp_path):
    """Verify that `make_submission.py mc_maze --phase val` without a search exits 1 with one
    line pointing at generate_all_configs.py and run_hyperopt.py, writing nothing."""
    home = tmp_path / "home"
    line = _one_line_error(_run("make_submission.py", "mc_maze", "--phase", "val",
                                env=_env(home)))
    assert "python generate_all_configs.py" in line and "python run_hyperopt.py mc_maze" in line
    assert not (home / "submissions").exists()


# -- README.md


def _readme_commands() -> list[list[str]]:
    """The commands in README.md's bash code blocks, as shell tokens (comments dropped,
    continuation lines joined, a leading `$ ` or VAR=value assignments removed)."""
    text = README.read_text()
    blocks = re.findall(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```", text,
                        flags=re.M | re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line.strip().removeprefix("$ "), comments=True)
            while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
                tokens.pop(0)
            if tokens:
                commands.append(tokens)
    return commands


def _python_command(tokens: list[str]) -> tuple[str, list[str]] | None:
    """("download_data.py", args) or ("-m nlb_ndt.synthetic", args); None if not python."""
    if tokens[0] != "python" and not tokens[0].endswith("/python"):
        return None
    if tokens[1] == "-m":
        return f"-m {tokens[2]}", tokens[3:]
    return tokens[1], tokens[2:]


def test_readme_commands_are_covered_and_match_the_scripts(pytestconfig):
    """Verify that every `python`/`make` command in README.md's bash blocks names a covered
    script or make target, uses only options that script's --help lists, and names real
    datasets; and that every top-level script and the quickstart appear there."""
    commands = _readme_commands()
    makefile = (ROOT / "Makefile").read_text()
    markers = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    seen, problems = set(), []
    for tokens in commands:
        shown = " ".join(tokens)
        if tokens[0] == "make":
            for target in tokens[1:]:
                seen.add(f"make {target}")
                recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", makefile, re.M)
                if target not in MAKE_TARGETS or recipe is None:
                    problems.append(f"{shown}: make target {target!r} is not covered")
                elif MAKE_TARGETS[target] not in recipe[1]:
                    problems.append(f"{shown}: its recipe does not run {MAKE_TARGETS[target]}")
                else:
                    seen.add(MAKE_TARGETS[target])
            continue
        if tokens[0] == "pip":
            for i, tok in enumerate(tokens[:-1]):
                if tok == "-r" and not (ROOT / tokens[i + 1]).is_file():
                    problems.append(f"{shown}: no file {tokens[i + 1]}")
            if "requirements-nodeps.txt" in tokens and "--no-deps" not in tokens:
                problems.append(f"{shown}: nlb-tools must be installed with --no-deps")
            continue
        parsed = _python_command(tokens)
        if parsed is None:
            continue  # screen, ray start, source ...: not ours
        key, args = parsed
        seen.add(key)
        if key not in COVERED:
            problems.append(f"{shown}: {key} is not covered by a test (COVERED)")
            continue
        if key == "-m pytest":
            for i, tok in enumerate(args[:-1]):
                if tok == "-m":
                    words = set(re.findall(r"\w+", args[i + 1])) - {"and", "or", "not"}
                    problems += [f"{shown}: unknown marker {w}" for w in words - markers]
            continue
        help_text = _help(key).stdout
        for arg in args:
            option = arg.split("=", 1)[0]
            if option.startswith("--") and not _has_option(help_text, option):
                problems.append(f"{shown}: {option} is not in {key} --help")
            if re.fullmatch(r"(mc|area2|dmfc)_\w+", arg) and \
                    arg.removesuffix("_20") not in DATASET_NAMES:
                problems.append(f"{shown}: {arg} is not a dataset (or <dataset>_20)")
    assert not problems, "\n".join(problems)
    assert {"make test", "make demo"} <= seen
    assert set(TOP_LEVEL_SCRIPTS) <= seen, sorted(set(TOP_LEVEL_SCRIPTS) - seen)


def test_readme_tables_match_the_source():
    """Verify that README.md's environment-variable defaults and AESMTE3 ensemble sizes are
    the ones paths.py, download.py and datasets.py use."""
    lines = README.read_text().splitlines()

    def row(first_cell: str) -> list[str]:
        found = [line for line in lines if line.startswith(f"| {first_cell} |")]
        assert len(found) == 1, f"README needs one table row for {first_cell}"
        return [cell.strip() for cell in found[0].strip("|").split("|")]

    home = Path("/nlb_home_in_readme")
    defaults = {"NLB_HOME": "~/nlb_2021"}
    defaults.update({var: f"$NLB_HOME/{Path(value).relative_to(home)}"
                     for var, value in get_paths({"NLB_HOME": str(home)}).as_env().items()
                     if var != "NLB_HOME"})
    policy = fetch.RetryPolicy.from_env({})
    defaults.update({
        "NLB_DANDI_API_URL": download.DEFAULT_DANDI_API_URL,
        "NLB_ZENODO_API_URL": download.DEFAULT_ZENODO_API_URL,
        "NLB_EVAL_DATA_URL": download.DEFAULT_EVAL_DATA_URL,
        "NLB_DOWNLOAD_RETRIES": f"{policy.attempts:g}",
        "NLB_DOWNLOAD_BACKOFF_S": f"{policy.backoff_s:g}",
        "NLB_DOWNLOAD_TIMEOUT_S": f"{policy.timeout_s:g}",
    })
    # The original's NLB_CACHE_DIR names a folder nothing here uses: its row says so.
    defaults["NLB_CACHE_DIR"] = "$NLB_HOME/processed"
    assert set(PATH_VARS) <= set(defaults)
    for var, default in defaults.items():
        assert row(f"`{var}`")[1] == f"`{default}`", var

    header = next(line for line in lines if "AESMTE3 ensemble size" in line)
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    size_col, dandi_col = columns.index("AESMTE3 ensemble size"), columns.index("DANDI set")
    for name in DATASET_NAMES:
        spec = get_spec(name)
        cells = row(f"`{name}`")
        assert (cells[size_col], cells[dandi_col]) == (str(spec.ensemble_size),
                                                       spec.dandiset_id), name


def test_demo_sets_aside_a_folder_from_other_templates(tmp_path):
    """Verify that the demo resumes its own folder but moves aside (never deletes) one
    made with other templates, which its search could not continue."""
    from helpers import load_script

    demo = load_script("demo")
    home = tmp_path / "demo_output"
    (home / "ray_results").mkdir(parents=True)
    demo._set_aside_stale(home)  # no stamp: an older demo's folder
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("demo_output.old-")]
    assert len(aside) == 1 and (aside[0] / "ray_results").is_dir()
    assert home.is_dir() and not (home / "ray_results").exists()

    (home / "ray_results").mkdir()
    demo._set_aside_stale(home)  # same templates: resumed in place
    assert (home / "ray_results").is_dir()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("demo_output.old-")]) == 1
    (home / "demo_templates.sha256").write_text("0" * 64)
    demo._set_aside_stale(home)  # changed templates
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("demo_output.old-")]) == 2
