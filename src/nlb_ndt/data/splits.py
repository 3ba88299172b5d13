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

from nlb_ndt.config.typed import DataConfig
from nlb_ndt.data import preprocess

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


@dataclass
class TrainingData:
    """What a trainer trains and validates on.

    Attributes:
        train: the training trials (NLB's train split, or train+val for a refit).
        val: the val split, or None when nothing is left to validate on (a refit).
        val_heldout_target: (B_val, T_obs, N_out) the val target's eval_spikes_heldout,
            which co-bps is scored against (DMFC's carries NaNs outside set -> go, exactly
            as nlb_tools' evaluate and the ranking stage see it); None without val.
    """

    train: SplitTensors
    val: SplitTensors | None
    val_heldout_target: np.ndarray | None

    @property
    def dims(self) -> dict[str, int]:
        """n_heldin, n_heldout, t_obs, t_fwd of the training trials."""
        return {"n_heldin": self.train.heldin.shape[-1],
                "n_heldout": self.train.heldout.shape[-1],
                "t_obs": self.train.heldin.shape[1], "t_fwd": self.train.forward.shape[1]}


def training_data(data: DataConfig, *, seed: int, device: torch.device | str = "cpu",
                  arrays: Mapping[str, np.ndarray] | None = None,
                  val_heldout_target: np.ndarray | None = None, paths=None) -> TrainingData:
    """The splits a run trains on, from the tensor cache unless `arrays` are given.

    Args:
        data: which dataset, bin width and splits (train, or train+val for a refit, whose
            tensors are the test phase's: its train split is NLB's train+val trials).
        seed: seeds the choice of DATA.RANDOM_SUBSET_TRIALS.
        device: where the tensors live.
        arrays, val_heldout_target: in-memory tensors and target (benchmarks) instead of
            the cache.
        paths: resolved paths (default: from the environment).
    """
    if arrays is None:
        arrays = preprocess.load_tensors(data.dataset, phase="test" if data.refit else "val",
                                         bin_ms=data.bin_ms, paths=paths)
    train = random_subset(split_tensors(arrays, "train", device), data.random_subset_trials,
                          seed)
    if data.refit:
        return TrainingData(train, None, None)
    if val_heldout_target is None:
        target = preprocess.load_val_target(data.dataset, bin_ms=data.bin_ms, paths=paths)
        (group,) = target.keys()
        val_heldout_target = target[group]["eval_spikes_heldout"]
    return TrainingData(train, split_tensors(arrays, "eval", device),
                        np.asarray(val_heldout_target))
