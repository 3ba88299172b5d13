"""Where and how a run computes: the device, its precision, seeds and library versions.

Kept apart from the trainer so that ranking, submission and validation can pick a device
without importing training code, and so every record (run_info.json, checkpoints,
experiment_info.json) lists the same libraries.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

#: Libraries whose versions every record keeps (python is added to them).
VERSIONED_PACKAGES = ("nlb-ndt", "torch", "numpy", "nlb-tools", "pandas", "scipy",
                      "scikit-learn", "scikit-optimize", "ray", "yacs")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global generators (dropout draws from them), to save with a run's state."""
    cuda = (torch.cuda.get_rng_state(device) if device.type == "cuda"
            else torch.empty(0, dtype=torch.uint8))
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def set_global_rng_state(state, device: torch.device) -> None:
    """Put back what `global_rng_state` saved (the CUDA part only on the same kind of device)."""
    torch.set_rng_state(state["torch_rng"].cpu())
    if device.type == "cuda" and state["cuda_rng"].numel():
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)


def resolve_device(name: str | torch.device | None, cfg=None) -> torch.device:
    """"auto" (or None) means CUDA when visible, else CPU.

    With a config, None falls back to cfg.SYSTEM.DEVICE and "cuda" means
    cuda:<cfg.SYSTEM.TORCH_GPU_ID>.
    """
    name = name if name is not None else (cfg.SYSTEM.DEVICE if cfg is not None else "auto")
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and cfg is not None:
        name = f"cuda:{cfg.SYSTEM.TORCH_GPU_ID}"
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """True where bf16 matrix multiplies run natively, so autocast pays off.

    CUDA: compute capability 8.0 or newer (A100, H100, ...). `is_bf16_supported()` alone
    also says yes on a V100 or T4, where bf16 is only emulated, slower than fp32 and less
    exact. CPU: AVX512-BF16 or AMX (e.g. AMD Zen 4, Intel Sapphire Rapids), unless
    NLB_CPU_BF16 says otherwise ("0": train in fp32 as a CPU without bf16 does; "1": use
    bf16 anyway).
    """
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "cpu":
        override = os.environ.get("NLB_CPU_BF16", "").strip()
        if override in ("0", "1"):
            return override == "1"
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries a result depends on (those installed)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions
