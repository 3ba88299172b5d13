"""Small helpers shared by several test modules (importable: tests/ is on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Every path variable of nlb_ndt.paths; tests clear them all before pointing NLB_HOME at a
# temporary folder, so a user's real NLB_HOME is never touched.
PATH_VARS = ("NLB_HOME", "NLB_DATA_RAW", "NLB_CACHE_DIR", "NDT_CACHE_DIR", "RAY_TUNE_HOME",
             "CHECKPOINT_DIR", "CONFIG_DIR", "SUBMISSION_VALIDATION_ROOT")


def load_script(name: str):
    """Import a top-level script (e.g. "make_submission") as a module, to call its main()."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
