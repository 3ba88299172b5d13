"""Reference rate predictions for scoring: spike smoothing + Poisson GLM, and constant rates.

Both take the tensors of `nlb_ndt.data.preprocess.load_tensors` (either phase) and return the
six arrays of an NLB submission group, in spikes per bin (float32):

- `smoothing_rates`: the recipe of nlb_tools' spike-smoothing baseline
  (examples/baselines/smoothing): held-in spikes smoothed with a Gaussian kernel (zero
  padding at the window edges) are the held-in rates; a Poisson GLM per held-out neuron,
  fitted on the train trials from log(smoothed + 1e-4), gives the held-out rates. Forward
  bins get each neuron's mean rate. `NLB_SMOOTHING_PARAMS` holds nlb_tools' per-dataset
  kernel widths and penalties.
- `constant_rates`: every neuron's mean rate over the train trials, everywhere (co-bps ~ 0).

Shapes: train (N_train, T_obs, N), eval (N_eval, T_obs, N), forward (N_eval, T_fwd, N).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.ndimage import gaussian_filter1d
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

_MIN_RATE = 1e-9  # spikes/bin; keeps rates strictly positive for log-likelihoods
_LOG_OFFSET = 1e-4  # added to smoothed counts before the log (nlb_tools' value)

#: nlb_tools' smoothing-baseline settings per dataset: kernel s.d. (ms) and GLM penalty.
NLB_SMOOTHING_PARAMS: dict[str, dict[str, float]] = {
    "mc_maze": {"kern_sd_ms": 50, "alpha": 0.01},
    "mc_rtt": {"kern_sd_ms": 30, "alpha": 0.1},
    "area2_bump": {"kern_sd_ms": 30, "alpha": 0.01},
    "dmfc_rsg": {"kern_sd_ms": 60, "alpha": 0.001},
    "mc_maze_large": {"kern_sd_ms": 40, "alpha": 0.1},
    "mc_maze_medium": {"kern_sd_ms": 60, "alpha": 0.1},
    "mc_maze_small": {"kern_sd_ms": 60, "alpha": 0.1},
}


def smoothing_rates(tensors: dict[str, np.ndarray], *, bin_ms: int = 5,
                    kern_sd_ms: float = 50.0, alpha: float = 0.1) -> dict[str, np.ndarray]:
    """Smoothed held-in spikes, and a Poisson GLM from them to the held-out neurons.

    Args:
        tensors: preprocess.load_tensors output (train_spikes_* and eval_spikes_heldin).
        bin_ms: bin width of the tensors (ms).
        kern_sd_ms: s.d. of the Gaussian smoothing kernel (ms).
        alpha: L2 penalty of sklearn's PoissonRegressor (on log(smoothed + 1e-4)).

    Returns:
        The six submission arrays (float32, spikes per bin).
    """
    from sklearn.linear_model import PoissonRegressor  # scikit-learn: slow import, one baseline

    sd_bins = kern_sd_ms / bin_ms
    train_in = _smooth(tensors["train_spikes_heldin"], sd_bins)
    eval_in = _smooth(tensors["eval_spikes_heldin"], sd_bins)
    train_out = tensors["train_spikes_heldout"]

    x_train = np.log(train_in.reshape(-1, train_in.shape[-1]) + _LOG_OFFSET)
    x_eval = np.log(eval_in.reshape(-1, eval_in.shape[-1]) + _LOG_OFFSET)
    y_train = train_out.reshape(-1, train_out.shape[-1])
    valid = ~np.isnan(y_train)

    n_out = train_out.shape[-1]
    pred_train = np.empty((len(x_train), n_out))
    pred_eval = np.empty((len(x_eval), n_out))
    # One BLAS / OpenMP thread: these small fits are 10-30x slower with several threads
    # fighting over a few cores.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few neurons may want more lbfgs steps
        for j in range(n_out):
            glm = PoissonRegressor(alpha=alpha, max_iter=500)
            glm.fit(x_train[valid[:, j]], y_train[valid[:, j], j])
            pred_train[:, j] = glm.predict(x_train)
            pred_eval[:, j] = glm.predict(x_eval)
    logger.info("smoothing baseline: %.0f ms kernel, GLM alpha %g, %d held-out neurons",
                kern_sd_ms, alpha, n_out)

    out = {
        "train_rates_heldin": np.maximum(train_in, _MIN_RATE),
        "train_rates_heldout": pred_train.reshape(train_out.shape),
        "eval_rates_heldin": np.maximum(eval_in, _MIN_RATE),
        "eval_rates_heldout": pred_eval.reshape(eval_in.shape[:2] + (n_out,)),
        **_mean_forward(tensors),
    }
    return {k: v.astype(np.float32) for k, v in out.items()}


def constant_rates(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each neuron's mean rate over the train trials, for every trial and bin."""
    n_train = tensors["train_spikes_heldin"].shape[0]
    n_eval, t_obs = tensors["eval_spikes_heldin"].shape[:2]
    out = {}
    for kind in ("heldin", "heldout"):
        mean = _neuron_mean(tensors[f"train_spikes_{kind}"])
        out[f"train_rates_{kind}"] = np.broadcast_to(mean, (n_train, t_obs, mean.size))
        out[f"eval_rates_{kind}"] = np.broadcast_to(mean, (n_eval, t_obs, mean.size))
    out.update(_mean_forward(tensors))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _mean_forward(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward-window rates: each neuron's mean over the train trials' forward bins."""
    n_eval = tensors["eval_spikes_heldin"].shape[0]
    out = {}
    for kind in ("heldin", "heldout"):
        fwd = tensors[f"train_spikes_{kind}_forward"]
        mean = _neuron_mean(fwd)
        shape = (n_eval, fwd.shape[1], mean.size)
        out[f"eval_rates_{kind}_forward"] = np.broadcast_to(mean, shape)
    return out


def _neuron_mean(spikes: np.ndarray) -> np.ndarray:
    mean = np.nanmean(spikes.reshape(-1, spikes.shape[-1]).astype(np.float64), axis=0)
    return np.maximum(np.nan_to_num(mean), _MIN_RATE)


def _smooth(spikes: np.ndarray, sd_bins: float) -> np.ndarray:
    """Gaussian smoothing along time within each trial, +-3 s.d., zeros beyond the window
    (as the nlb_tools recipe); NaN bins count as zero."""
    x = np.nan_to_num(spikes.astype(np.float64))
    return gaussian_filter1d(x, sd_bins, axis=1, mode="constant", cval=0.0, truncate=3.0)
