"""What tests and benchmarks both need: tensors of a dataset's shape, the original's files.

Not used by the pipeline itself. Kept in the package (not in tests/) so that bench/ scripts
need neither the test folder nor private functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nlb_ndt.datasets import DatasetSpec


def poisson_tensors(spec: DatasetSpec, bin_ms: int = 5, *, phase: str = "val",
                    rate: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Poisson counts with `spec`'s shapes, laid out as `preprocess.load_tensors` returns.

    Args:
        spec: the dataset whose trial, bin and neuron counts to use.
        bin_ms: bin width (bins come from `spec.bins`).
        phase: "val" (train + val splits, with held-out and forward counts) or "test"
            (train+val trials with everything, test trials held-in only).
        rate: mean count per bin (default about 10 Hz at this bin width).
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    t_obs, t_fwd = spec.bins(bin_ms)
    lam = 0.05 * bin_ms / 5 if rate is None else rate

    def counts(n: int, t: int, k: int) -> np.ndarray:
        return rng.poisson(lam, size=(n, t, k)).astype(np.float32)

    splits = ((("train", spec.n_train), ("eval", spec.n_val)) if phase == "val" else
              (("train", spec.n_train + spec.n_val),))
    out = {}
    for prefix, n in splits:
        out[f"{prefix}_spikes_heldin"] = counts(n, t_obs, spec.n_heldin)
        out[f"{prefix}_spikes_heldout"] = counts(n, t_obs, spec.n_heldout)
        out[f"{prefix}_spikes_heldin_forward"] = counts(n, t_fwd, spec.n_heldin)
        out[f"{prefix}_spikes_heldout_forward"] = counts(n, t_fwd, spec.n_heldout)
    if phase != "val":
        out["eval_spikes_heldin"] = counts(spec.n_test, t_obs, spec.n_heldin)
    return out


def save_original_layout(path: str | Path, model: torch.nn.Module, cfg, opt, *,
                         max_spikes: int, num_neurons: int, trial_length: int, update: int,
                         protocol: int = 2) -> None:
    """Write `model` laid out as the original's runner saved a snapshot: a pickled dict
    holding the yacs config object itself, optimizer and scheduler states, the best-value
    records and the extra state."""
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
