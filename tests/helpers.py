"""Small helpers shared by several test modules (importable: tests/ is on sys.path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Tests clear every path variable before pointing NLB_HOME at a temporary folder, so a
# user's real NLB_HOME is never touched.
from nlb_ndt.paths import PATH_VARIABLES as PATH_VARS  # noqa: F401 (re-exported)

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import a top-level script (e.g. "make_submission") as a module, to call its main()."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_original_layout(path, model, cfg, opt, *, max_spikes: int, num_neurons: int,
                         trial_length: int, update: int, protocol: int = 2) -> None:
    """Write `model` as the original's Runner.save_checkpoint laid a snapshot out: a
    pickled dict with the yacs config object itself, optimizer and scheduler states, the
    best-value records and the extra state (reference §3.7)."""
    import torch

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    torch.save({
        "state_dict": model.state_dict(),
        "optim_state": opt.state_dict(),
        "lr_scheduler": sched.state_dict(),
        "config": cfg,
        "best_val": {"value": torch.tensor(0.25), "update": update},
        "best_unmasked_val": {"value": torch.tensor(0.31), "update": update - 20},
        "best_r2": {"value": -100, "update": -1},
        "max_spikes": max_spikes,
        "num_neurons": num_neurons,
        "trial_length": trial_length,
        "extra_state": {"update": update, "checkpoint": update // 500, "pth_time": 100.0,
                        "max_spikes": max_spikes},
    }, path, pickle_protocol=protocol)


def isolated_download_env(monkeypatch, home) -> None:
    """Path variables cleared and NLB_HOME at `home`; fast retries; no proxy for 127.0.0.1
    (the fake DANDI/Zenodo server)."""
    for var in PATH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NLB_HOME", str(home))
    monkeypatch.setenv("NLB_DOWNLOAD_BACKOFF_S", "0.01")
    monkeypatch.setenv("NLB_DOWNLOAD_RETRIES", "4")
    monkeypatch.setenv("NLB_DOWNLOAD_TIMEOUT_S", "10")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
