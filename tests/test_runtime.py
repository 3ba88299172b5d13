"""Device choice, native-bf16 detection, seeding and the library versions of a record."""

from __future__ import annotations

import platform
import random
from pathlib import Path

import numpy as np
import torch

from nlb_ndt.config.defaults import get_cfg_defaults
from nlb_ndt.runtime import bf16_native, library_versions, resolve_device, seed_everything


def test_resolve_device_auto_cpu_and_config():
    """Verify that auto means CUDA only when visible, names pass through, and a config's
    SYSTEM.DEVICE / TORCH_GPU_ID are used when no name is given."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    device = torch.device("cpu")
    assert resolve_device(device) is device
    cfg = get_cfg_defaults()
    cfg.SYSTEM.DEVICE = "cpu"
    assert resolve_device(None, cfg) == torch.device("cpu")
    cfg.SYSTEM.DEVICE, cfg.SYSTEM.TORCH_GPU_ID = "cuda", 3
    assert resolve_device(None, cfg) == torch.device("cuda:3")
    assert resolve_device("cuda") == torch.device("cuda")  # no config: no index added


def test_bf16_native_on_cpu_follows_cpuinfo_flags():
    """Verify that the CPU answer is whether /proc/cpuinfo lists avx512_bf16 or amx_bf16."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    want = "avx512_bf16" in flags or "amx_bf16" in flags
    assert bf16_native(torch.device("cpu")) is want
    assert bf16_native(torch.device("meta")) is False
    if not torch.cuda.is_available():
        assert bf16_native(torch.device("cuda")) is False


def test_library_versions_lists_python_torch_numpy():
    """Verify the record holds the running python, torch and numpy versions."""
    versions = library_versions()
    assert versions["python"] == platform.python_version()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["numpy"] == np.__version__
    assert all(isinstance(v, str) and v for v in versions.values())


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    """Verify that the same seed gives the same draws from all three generators."""
    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(5)
    first = draws()
    seed_everything(5)
    assert draws() == first
    seed_everything(6)
    assert draws() != first


def test_cpu_bf16_detection_can_be_overridden(monkeypatch):
    """Verify that NLB_CPU_BF16=0 / 1 decides for the CPU (to reproduce a CPU without bf16)
    and that anything else leaves it to the CPU's flags."""
    import torch

    from nlb_ndt.runtime import bf16_native

    cpu = torch.device("cpu")
    monkeypatch.setenv("NLB_CPU_BF16", "0")
    assert bf16_native(cpu) is False
    monkeypatch.setenv("NLB_CPU_BF16", "1")
    assert bf16_native(cpu) is True
    monkeypatch.setenv("NLB_CPU_BF16", "auto")
    flags = open("/proc/cpuinfo").read()
    assert bf16_native(cpu) == ("avx512_bf16" in flags or "amx_bf16" in flags)
