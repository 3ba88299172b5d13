"""Rates from a trained NDT: held-in spikes in, rates for every neuron and bin out.

Shape legend: B = trials, T_obs observed bins, T_fwd forward-prediction bins
(T = T_obs + T_fwd = model.trial_length), N_in held-in neurons, N_out held-out neurons
(N = N_in + N_out = model.num_neurons). Rates are in spikes per bin (of the data's bin
width), float32.

The model sees exactly what it saw at validation time in the original: held-in counts
clamped to the checkpoint's max_spikes, zeros for every held-out neuron and every forward
bin, no masking, dropout off. An LFADS model (it has `log_rates_from_heldin`) is given the
held-in counts alone, and returns the rates of its posterior means.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlb_ndt.datasets import RATE_KEYS
from nlb_ndt.model.checkpoint import load_model, weights_digest

logger = logging.getLogger(__name__)



def _as_counts(heldin: Any) -> np.ndarray:
    """`heldin` as a float32 array of whole, non-negative counts (NaN -> 0, with a warning)."""
    arr = np.asarray(heldin)
    if arr.ndim != 3:
        raise ValueError(f"heldin must be (trials, bins, held-in neurons), got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"heldin must hold spike counts, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        nan = np.isnan(arr)
        if nan.any():
            # nlb_tools marks missing data with NaN; the original cast it to a huge negative
            # integer. A zero is what the model saw for every other absent count.
            logger.warning("heldin has %d NaN entries (of %d); treating them as 0 spikes",
                           int(nan.sum()), arr.size)
            arr = np.where(nan, 0, arr)
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            raise ValueError("heldin must hold whole spike counts; found non-integer or "
                             "infinite values")
    if arr.size and arr.min() < 0:
        raise ValueError(f"heldin must hold spike counts >= 0; found {arr.min()}")
    return arr.astype(np.float32, copy=False)


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def predict_rates(model: torch.nn.Module, heldin: Any, *, batch_size: int = 256,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Rates for every neuron at every bin, observed and forward, given held-in spikes.

    Args:
        model: an NDT (with num_neurons, trial_length and max_spikes attributes).
        heldin: (B, T_obs, N_in) spike counts, integer (or float holding whole counts).
        batch_size: trials per forward pass (changes speed and memory, not the result
            beyond float rounding).
        device: where to run; default the model's own device. The model is moved there
            for the call and back afterwards.

    Returns:
        float32 (B, T_obs + T_fwd, N_in + N_out) rates in spikes per bin, with
        T_fwd = model.trial_length - T_obs and N_out = model.num_neurons - N_in.

    Raises:
        ValueError: heldin has the wrong rank, is larger than the model, or holds
            something other than counts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    counts = _as_counts(heldin)
    n_trials, t_obs, n_in = counts.shape
    n_total, t_total = int(model.num_neurons), int(model.trial_length)
    if t_obs > t_total or n_in > n_total:
        raise ValueError(f"heldin has {t_obs} bins x {n_in} neurons, but the model covers "
                         f"{t_total} bins x {n_total} neurons")
    # The model expects at most max_spikes per bin (training max + 3); larger counts would
    # also index past the per-count embedding.
    # A new array: the caller's (shared by every member of an ensemble) stays as it was.
    counts = np.minimum(counts, np.float32(model.max_spikes))

    home = _model_device(model)
    target = torch.device(device) if device is not None else home
    modes = [(m, m.training) for m in model.modules()]
    out = np.empty((n_trials, t_total, n_total), dtype=np.float32)
    try:
        model.to(target)
        model.eval()
        with torch.no_grad():
            for start in range(0, n_trials, batch_size):
                chunk = torch.from_numpy(counts[start:start + batch_size]).to(target)
                if hasattr(model, "log_rates_from_heldin"):
                    # LFADS reads held-in counts only (raw: its max_spikes never binds).
                    log_rates = model.log_rates_from_heldin(chunk)
                else:
                    src = torch.zeros(chunk.shape[0], t_total, n_total, device=target)
                    src[:, :t_obs, :n_in] = chunk  # held-out neurons, forward bins stay 0
                    _, log_rates = model(src)
                out[start:start + chunk.shape[0]] = (
                    torch.exp(log_rates.float()).cpu().numpy())
    finally:
        for module, training in modes:
            module.training = training
        model.to(home)
    return out


def split_rates(rates: np.ndarray, *, n_heldin: int, t_obs: int) -> dict[str, np.ndarray]:
    """Split (B, T, N) rates at observed/forward bins and held-in/held-out neurons.

    Returns:
        {heldin: (B, T_obs, N_in), heldout: (B, T_obs, N_out),
         heldin_forward: (B, T_fwd, N_in), heldout_forward: (B, T_fwd, N_out)}.
    """
    if rates.ndim != 3:
        raise ValueError(f"rates must be (trials, bins, neurons), got shape {rates.shape}")
    if not (0 <= t_obs <= rates.shape[1] and 0 <= n_heldin <= rates.shape[2]):
        raise ValueError(f"cannot split rates of shape {rates.shape} at t_obs={t_obs}, "
                         f"n_heldin={n_heldin}")
    return {
        "heldin": np.ascontiguousarray(rates[:, :t_obs, :n_heldin]),
        "heldout": np.ascontiguousarray(rates[:, :t_obs, n_heldin:]),
        "heldin_forward": np.ascontiguousarray(rates[:, t_obs:, :n_heldin]),
        "heldout_forward": np.ascontiguousarray(rates[:, t_obs:, n_heldin:]),
    }


def submission_rates(model: torch.nn.Module, *, train_heldin: Any, eval_heldin: Any,
                     batch_size: int = 256, device: str | torch.device | None = None
                     ) -> dict[str, np.ndarray]:
    """The six arrays of an NLB submission for one dataset, float32 spikes per bin.

    Args:
        model: an NDT.
        train_heldin: (B_train, T_obs, N_in) held-in spikes of the train trials.
        eval_heldin: (B_eval, T_obs, N_in) held-in spikes of the eval trials.
        batch_size, device: as in `predict_rates`.

    Returns:
        {train_rates_heldin, train_rates_heldout, eval_rates_heldin, eval_rates_heldout,
        eval_rates_heldin_forward, eval_rates_heldout_forward}. Forward rates of the train
        trials are not part of a submission and are dropped.
    """
    train_shape, eval_shape = np.shape(train_heldin), np.shape(eval_heldin)
    if len(train_shape) != 3 or len(eval_shape) != 3 or train_shape[1:] != eval_shape[1:]:
        raise ValueError(f"train_heldin {train_shape} and eval_heldin {eval_shape} must both "
                         "be (trials, bins, held-in neurons) with the same bins and neurons")
    _, t_obs, n_in = train_shape
    parts = {}
    for phase, heldin in (("train", train_heldin), ("eval", eval_heldin)):
        rates = predict_rates(model, heldin, batch_size=batch_size, device=device)
        for name, arr in split_rates(rates, n_heldin=n_in, t_obs=t_obs).items():
            parts[f"{phase}_rates_{name}"] = arr
    return {key: parts[key] for key in RATE_KEYS}


def snapshot_rates(path: str | Path, *, train_heldin: Any, eval_heldin: Any,
                   device: str | torch.device = "cpu",
                   expect: tuple[str, int] | None = None,
                   digest: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """The six submission arrays of one checkpoint file, and the file's info.

    Args:
        path: a checkpoint (ours or the original's).
        train_heldin, eval_heldin: as in `submission_rates`.
        device: where the model runs.
        expect: (dataset, bin_ms) the checkpoint must have been trained on (checked for
            our own files, which record it).
        digest: also put the sha1 of the weights into the info ("weights_sha1"), which
            the ranking uses to count identical snapshots once.

    Raises:
        ValueError: the checkpoint was trained on other data than `expect`.
    """
    model, info = load_model(path, device=device)
    if digest:
        info["weights_sha1"] = weights_digest(model)
    if expect is not None and info.get("format") == "nlb_ndt":
        data = (info["cfg"].DATA.DATASET, int(info["cfg"].DATA.BIN_MS))
        if data != tuple(expect):
            raise ValueError(f"{path} was trained on {data[0]} at {data[1]} ms, not on "
                             f"{expect[0]} at {expect[1]} ms")
    rates = submission_rates(model, train_heldin=train_heldin, eval_heldin=eval_heldin)
    return rates, info
