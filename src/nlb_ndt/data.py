"""The typed train / val splits a trainer works on, built from the cached tensors.

Shape legend: B = trials, T_obs / T_fwd observed / forward bins, N_in / N_out neurons,
N = N_in + N_out. Counts are float32 holding whole numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class SplitTensors:
    """One split on one device. NaN counts become 0 in `heldin` (never a garbage integer)
    and stay NaN in the label sources, where they mean "not scored"."""

    heldin: torch.Tensor  # (B, T_obs, N_in)
    heldout: torch.Tensor  # (B, T_obs, N_out), NaN = not scored
    forward: torch.Tensor  # (B, T_fwd, N), NaN = not scored

    @property
    def n_trials(self) -> int:
        return self.heldin.shape[0]

    def take(self, idx) -> "SplitTensors":
        """The trials at `idx` (a slice, or an index tensor on the split's device)."""
        return SplitTensors(self.heldin[idx], self.heldout[idx], self.forward[idx])


def split_tensors(arrays: Mapping[str, np.ndarray], prefix: str,
                  device: torch.device | str = "cpu") -> SplitTensors:
    """The `prefix` ("train" or "eval") split of nlb_tools-style arrays as tensors.

    Args:
        arrays: {prefix}_spikes_heldin, _heldout, _heldin_forward and _heldout_forward.
        prefix: "train" or "eval".
        device: where the tensors live.
    """
    def tensor(key: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(arrays[key], dtype=np.float32), device=device)

    heldin = tensor(f"{prefix}_spikes_heldin")
    n_nan = int(torch.isnan(heldin).sum())
    if n_nan:
        log.warning("%d NaN held-in counts in the %s split are fed as 0", n_nan, prefix)
    forward = torch.cat([tensor(f"{prefix}_spikes_heldin_forward"),
                         tensor(f"{prefix}_spikes_heldout_forward")], dim=-1)
    return SplitTensors(torch.nan_to_num(heldin, nan=0.0), tensor(f"{prefix}_spikes_heldout"),
                        forward)


def random_subset(split: SplitTensors, fraction: float, seed: int) -> SplitTensors:
    """A seeded random `fraction` of the trials (at least one); the split itself if 1."""
    if fraction >= 1.0:
        return split
    keep = max(1, int(split.n_trials * fraction))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(split.n_trials, generator=g)[:keep]
    return split.take(idx.to(split.heldin.device))
