"""Templates -> rendered configs (what `generate_all_configs.py` writes into CONFIG_DIR),
and the named profiles.

templates/<name>.yaml (in this package, beside this module; `configs/templates` in a
checkout links to it) holds a run's fixed settings (only what differs from the defaults in
nlb_ndt.config.defaults) and <name>.json its search space. Rendering adds this machine's
paths and checks both files, so a bad template fails here, naming the key and the file,
rather than hours into a search. profiles/<name>.yaml holds named overlays (aesmte3, ...).
Both folders are package data, so a plain `pip install .` finds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from yacs.config import CfgNode as CN

from nlb_ndt.atomic import write_text_atomic
from nlb_ndt.config.defaults import apply_overrides, get_cfg_defaults, load_config
from nlb_ndt.config.search_space import load_search_space, parse_search_space
from nlb_ndt.datasets import get_spec
from nlb_ndt.paths import get_paths

log = logging.getLogger(__name__)

#: The shipped templates: <name>.yaml (fixed overrides) and <name>.json (search space).
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

_RENDER_HEADER = (
    "# Rendered from configs/templates/{name}.yaml by generate_all_configs.py, with this\n"
    "# machine's paths. Edit freely: generate_all_configs.py never replaces an edited file\n"
    "# unless given --overwrite. Keys and units: nlb_ndt/config/defaults.py.\n"
)


def template_names(template_dir: str | Path | None = None) -> list[str]:
    """Names of the templates (run names: the seven datasets and "synthetic"), sorted."""
    template_dir = Path(template_dir or TEMPLATE_DIR)
    return sorted(p.stem for p in template_dir.glob("*.yaml"))


def _check_template(path: Path) -> CN:
    """Defaults merged with one template; errors name the file (and yacs names the key)."""
    try:
        return load_config(path, freeze=False)
    except ValueError as exc:  # yacs type mismatch, e.g. 5 given for a float key
        raise ValueError(f"{path}: {exc}") from None


def render_config(name: str, *, paths: Any = None,
                  template_dir: str | Path | None = None) -> tuple[str, str]:
    """The rendered YAML and JSON texts of template `name`.

    The YAML is the template's keys plus the resolved paths (DATA.DATAPATH =
    NDT_CACHE_DIR, CHECKPOINT_DIR, TRAIN.TUNE_HP_JSON = CONFIG_DIR/<name>.json); the JSON
    is the template's search space, checked. Unknown keys in either raise an error naming
    the key and the file.

    Args:
        name: template (run) name, e.g. "mc_maze" or "synthetic".
        paths: a `nlb_ndt.paths.Paths` (default: `get_paths()`).
        template_dir: where the templates are (default: TEMPLATE_DIR).
    """
    paths = paths or get_paths()
    template_dir = Path(template_dir or TEMPLATE_DIR)
    yaml_path = template_dir / f"{name}.yaml"
    json_path = template_dir / f"{name}.json"
    if not yaml_path.is_file():
        raise FileNotFoundError(f"no template {yaml_path}; templates: "
                                f"{', '.join(template_names(template_dir)) or 'none'}")
    cfg = _check_template(yaml_path)
    spec = get_spec(cfg.DATA.DATASET)
    group = spec.group(cfg.DATA.BIN_MS)
    for key, phase in (("TRAIN_FILENAME", "train"), ("VAL_FILENAME", "train"),
                       ("TEST_FILENAME", "test")):
        expected = f"{group}_{phase}.h5"
        if cfg.DATA[key] != expected:
            raise ValueError(f"{yaml_path}: DATA.{key} is {cfg.DATA[key]!r} but the data "
                             f"stage writes {expected!r} for {spec.name} at "
                             f"{cfg.DATA.BIN_MS} ms")
    load_search_space(json_path, cfg)  # raises naming the key and the file

    data = yaml.safe_load(yaml_path.read_text()) or {}
    data["CHECKPOINT_DIR"] = str(paths.checkpoint_dir)
    data.setdefault("DATA", {})["DATAPATH"] = str(paths.ndt_cache_dir)
    data.setdefault("TRAIN", {})["TUNE_HP_JSON"] = str(paths.config_dir / f"{name}.json")
    yaml_text = _RENDER_HEADER.format(name=name) + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False)
    return yaml_text, json_path.read_text()


def generate_configs(names: Iterable[str], out_dir: str | Path, *, overwrite: bool = False,
                     paths: Any = None,
                     template_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """Render templates into `out_dir` as <name>.yaml and <name>.json.

    An existing file is never silently replaced: identical content is left alone
    ("unchanged"); different content (e.g. a user's edits) is kept ("kept", with a
    warning) unless `overwrite` ("overwritten"). Every template is checked before any
    file is written, so a bad template writes nothing.

    Args:
        names: template names (see `template_names()`).
        out_dir: destination folder (normally `paths.config_dir`); created if needed.
        overwrite: replace files whose content differs.
        paths: `nlb_ndt.paths.Paths` whose directories go into the configs.
        template_dir: where the templates are (default: TEMPLATE_DIR).

    Returns:
        [(file, status)] with status "written", "unchanged", "kept" or "overwritten".
    """
    out_dir = Path(out_dir)
    rendered = [(name, render_config(name, paths=paths, template_dir=template_dir))
                for name in names]
    log.info("rendering %d template(s) into %s", len(rendered), out_dir)
    report: list[tuple[Path, str]] = []
    for name, texts in rendered:
        for suffix, text in zip((".yaml", ".json"), texts):
            path = out_dir / f"{name}{suffix}"
            if not path.exists():
                status = "written"
            elif path.read_text() == text:
                status = "unchanged"
            elif overwrite:
                status = "overwritten"
                log.warning("overwriting %s (--overwrite)", path)
            else:
                status = "kept"
                log.warning("%s differs from its template (edited?); kept. Re-run with "
                            "--overwrite to replace it", path)
            if status in ("written", "overwritten"):
                write_text_atomic(path, text)
            report.append((path, status))
    return report


# --- Profiles: named sets of settings (configs/profiles/<name>.yaml) -------------------

#: The shipped profiles: <name>.yaml.
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
_PROFILE_FIELDS = {"description", "config", "objective", "gpus_per_trial", "cpus_per_trial",
                   "snapshots", "runs", "search_space", "search_space_only", "scheduler",
                   "pbt"}


@dataclass(frozen=True)
class Profile:
    """A named overlay: config keys plus search and submission settings, kept as data.

    Attributes:
        name: the file's stem (e.g. "aesmte3").
        description: one line shown in logs and records.
        config: {dotted config key: value}, merged after the rendered config.
        objective, gpus_per_trial, cpus_per_trial: search defaults (None: not set).
        snapshots: the snapshot kinds a submission ranks (empty: all).
        runs: {run name: {dotted config key: value}}, merged after `config` for that run
            (e.g. one attention head where a dataset's neuron count is odd).
        search_space: search-space entries (the JSON schema of nlb_ndt.config.search_space)
            added to, or replacing those of, the run's own search space.
        search_space_only: search `search_space` alone, not the run's own space too (a
            family whose keys the run's space does not hold).
        scheduler: the trial scheduler ("fifo", "asha", "pbt"; None: not set).
        pbt: population-based training's settings (perturbation_interval and burn_in in
            epochs, explore: {searched key: weight}).
    """

    name: str
    description: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    objective: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    snapshots: tuple[str, ...] = ()
    runs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    search_space: Mapping[str, Any] = field(default_factory=dict)
    search_space_only: bool = False
    scheduler: str | None = None
    pbt: Mapping[str, Any] = field(default_factory=dict)

    def config_for(self, run: str) -> dict[str, Any]:
        """The config keys this profile sets for run `run`."""
        return {**self.config, **dict(self.runs.get(run) or {})}


def profile_names(profile_dir: str | Path | None = None) -> list[str]:
    """The profiles shipped in configs/profiles/, sorted."""
    return sorted(p.stem for p in Path(profile_dir or PROFILE_DIR).glob("*.yaml"))


def load_profile(name: str, profile_dir: str | Path | None = None) -> Profile:
    """Read and check configs/profiles/<name>.yaml; errors name the file and the field."""
    path = Path(profile_dir or PROFILE_DIR) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no profile {name!r} ({path}); profiles: "
                                f"{', '.join(profile_names(profile_dir)) or 'none'}")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(data) - _PROFILE_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(_PROFILE_FIELDS))}")
    config = dict(data.get("config") or {})
    runs = {str(k): dict(v or {}) for k, v in (data.get("runs") or {}).items()}
    for overrides in (config, *runs.values()):
        apply_overrides(get_cfg_defaults(), overrides)  # unknown keys or wrong types fail
    space = dict(data.get("search_space") or {})
    if space:
        parse_search_space(space, get_cfg_defaults(), source=str(path))
    return Profile(name=name, description=str(data.get("description", "")), config=config,
                   objective=data.get("objective"),
                   gpus_per_trial=data.get("gpus_per_trial"),
                   cpus_per_trial=data.get("cpus_per_trial"),
                   snapshots=tuple(data.get("snapshots") or ()), runs=runs,
                   search_space=space, search_space_only=bool(data.get("search_space_only")),
                   scheduler=data.get("scheduler"),
                   pbt=dict(data.get("pbt") or {}))
