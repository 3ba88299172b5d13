"""Where everything lives: the original pipeline's environment variables, resolved lazily.

Every directory comes from an environment variable with the original's name and default,
read only when `get_paths()` is called (never at import) and never created here: the stage
that writes a directory creates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# (attribute, variable, default relative to NLB_HOME)
_LAYOUT = (
    ("data_raw", "NLB_DATA_RAW", "raw"),
    ("ndt_cache_dir", "NDT_CACHE_DIR", "neural-data-transformer"),
    ("ray_tune_home", "RAY_TUNE_HOME", "ray_results/neural-data-transformer"),
    ("checkpoint_dir", "CHECKPOINT_DIR", "checkpoints"),
    ("config_dir", "CONFIG_DIR", "configs"),
    ("submission_validation_root", "SUBMISSION_VALIDATION_ROOT", "submission-validation"),
)
#: The original's variables that name a folder nothing here uses (its nlb_tools cache):
#: accepted, ignored, and cleared with the others.
UNUSED_VARIABLES = ("NLB_CACHE_DIR",)
#: Every variable that moves a directory: clear them all to isolate a run under NLB_HOME.
PATH_VARIABLES = ("NLB_HOME", *(var for _, var, _ in _LAYOUT), *UNUSED_VARIABLES)


@dataclass(frozen=True)
class Paths:
    """Resolved directories (absolute). Attribute names follow the variables' names."""

    nlb_home: Path
    data_raw: Path
    ndt_cache_dir: Path
    ray_tune_home: Path
    checkpoint_dir: Path
    config_dir: Path
    submission_validation_root: Path

    @property
    def submissions_dir(self) -> Path:
        """Default home of rankings, ensemble curves and submission files."""
        return self.nlb_home / "submissions"

    @property
    def eval_data_test(self) -> Path:
        """The public test-split ground truth (nlb_tools' `eval_data_test.h5`)."""
        return self.data_raw / "eval_data_test.h5"

    def as_env(self) -> dict[str, str]:
        """The variables that reproduce these paths, e.g. for a Ray worker's runtime env."""
        env = {"NLB_HOME": str(self.nlb_home)}
        for attr, var, _ in _LAYOUT:
            env[var] = str(getattr(self, attr))
        return env


def _resolve(value: str) -> Path:
    return Path(os.path.expandvars(value)).expanduser().resolve()


def get_paths(env: Mapping[str, str] | None = None) -> Paths:
    """Resolve every directory from `env` (default: the process environment).

    Args:
        env: mapping of variable names to values; missing ones take the defaults.
    """
    env = os.environ if env is None else env
    home = _resolve(env.get("NLB_HOME") or "~/nlb_2021")
    resolved = {
        attr: _resolve(env[var]) if env.get(var) else home / default
        for attr, var, default in _LAYOUT
    }
    return Paths(nlb_home=home, **resolved)
