"""Figures of the submission stage (matplotlib Figures rendered by Agg: no display needed).

- `plot_ensemble_curve`: val co-bps of the top-N mean against N, chosen N marked.
- `plot_search`: the search's objective by trial (from each trial's metrics.csv).
- `plot_rates_vs_truth`: predicted against true rates for a few neurons (synthetic data).

Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from nlb_ndt.atomic import atomic_write

log = logging.getLogger(__name__)


def _figure(**kwargs) -> Figure:
    # A bare Figure renders through Agg when saved: no pyplot state, no global backend.
    return Figure(**kwargs)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_write(path, suffix=path.suffix) as tmp:  # matplotlib reads the suffix
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    log.info("wrote %s", path)
    return path


def plot_ensemble_curve(curve: Sequence[float], path: str | Path, *, chosen: int,
                        argmax: int | None = None, title: str = "",
                        greedy: Sequence[float] | None = None, method: str = "topn") -> Path:
    """co-bps of the ensemble against its size: the top-N mean, and greedy selection.

    Args:
        curve: co-bps of the mean of the top N snapshots, for N = 1..M.
        path: the PNG to write.
        chosen: the size used for the submission (marked with a star on its method's curve).
        argmax: the best N of the top-N curve, if different from `chosen` (a dashed line).
        title: figure title (e.g. the run name).
        greedy: co-bps of the greedy ensemble after each step (steps = members with
            repeats), when it was computed.
        method: "topn" or "greedy": the curve `chosen` belongs to.
    """
    sizes = np.arange(1, len(curve) + 1)
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(sizes, curve, "o-", ms=3, lw=1.2, label="mean of the top N")
    if greedy is not None and len(greedy):
        ax.plot(np.arange(1, len(greedy) + 1), greedy, "s-", ms=3, lw=1.2, color="darkgreen",
                label="greedy selection (with replacement)")
    ax.axhline(curve[0], color="gray", ls=":", lw=1, label="best single snapshot")
    picked = greedy if method == "greedy" and greedy is not None else curve
    ax.plot([chosen], [picked[chosen - 1]], "*", color="crimson", ms=14,
            label=f"chosen: {method} N = {chosen} ({picked[chosen - 1]:.4f})")
    if argmax is not None and argmax != chosen:
        ax.axvline(argmax, color="crimson", ls="--", lw=1, label=f"top-N argmax N = {argmax}")
    ax.set_xlabel("ensemble size N (members, counting repeats)")
    ax.set_ylabel("val co-bps")
    ax.set_title(title or "ensemble size sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_search(trials: Sequence[Mapping], path: str | Path, *, title: str = "",
                objective: str | None = "best_masked_loss") -> Path:
    """Objective by trial: best masked val loss (minimised) and best val co-bps.

    Args:
        trials: rows from `read_trial_histories` (need best_masked_loss and/or
            best_val_cobps).
        path: the PNG to write.
        title: figure title.
        objective: the metric the search optimised (its panel is labelled so).
    """
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    x = np.arange(1, len(trials) + 1)
    panels = (("best_masked_loss", "best masked val loss", np.minimum),
              ("best_val_cobps", "best val co-bps", np.maximum))
    for ax, (key, label, best) in zip(axes, panels):
        if key == objective:
            label += " (search objective)"
        y = np.array([float(t.get(key, np.nan)) for t in trials], dtype=float)
        ax.plot(x, y, "o", ms=4, alpha=0.7, label="trial")
        finite = np.where(np.isfinite(y), y, np.nan)
        if np.isfinite(finite).any():
            fill = np.inf if best is np.minimum else -np.inf
            running = best.accumulate(np.where(np.isfinite(finite), finite, fill))
            ax.step(x, np.where(np.isfinite(running), running, np.nan), where="post",
                    color="crimson", lw=1.2, label="best so far")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("trial (in start order)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or f"search: {len(trials)} trials")
    return _save(fig, path)


def plot_rates_vs_truth(pred: Mapping[str, np.ndarray], true: Mapping[str, np.ndarray],
                        path: str | Path, *, n_neurons: int = 3, trial: int = 0,
                        bin_ms: int = 5, title: str = "") -> Path:
    """Predicted and true rates over time for a few held-in and held-out neurons.

    Args:
        pred, true: submission-layout dicts (eval_rates_heldin, eval_rates_heldout, and
            their _forward parts), spikes per bin.
        path: the PNG to write.
        n_neurons: neurons per row (the most active true neurons of the trial).
        trial: which eval trial to show.
        bin_ms: bin width, for the time axis.
        title: figure title.
    """
    rows = ("heldin", "heldout")
    fig = _figure(figsize=(3.2 * n_neurons, 5.5))
    axes = fig.subplots(len(rows), n_neurons,
                             squeeze=False)
    for r, part in enumerate(rows):
        obs_p, obs_t = pred[f"eval_rates_{part}"], true[f"eval_rates_{part}"]
        fwd_p = pred.get(f"eval_rates_{part}_forward")
        fwd_t = true.get(f"eval_rates_{part}_forward")
        p = obs_p[trial] if fwd_p is None else np.concatenate([obs_p[trial], fwd_p[trial]])
        t = obs_t[trial] if fwd_t is None else np.concatenate([obs_t[trial], fwd_t[trial]])
        r2 = _r2(obs_t, obs_p)
        neurons = np.argsort(t.mean(axis=0))[::-1][:n_neurons]
        time = np.arange(t.shape[0]) * bin_ms
        for c, neuron in enumerate(neurons):
            ax = axes[r, c]
            ax.plot(time, t[:, neuron], color="black", lw=1.2, label="true")
            ax.plot(time, p[:, neuron], color="tab:orange", lw=1.2, label="predicted")
            ax.axvline(obs_t.shape[1] * bin_ms, color="gray", ls=":", lw=1)
            ax.set_title(f"{part} neuron {neuron}", fontsize=9)
            ax.set_xlabel("time in trial (ms)")
            if c == 0:
                ax.set_ylabel(f"spikes / bin ({part}: R2 {r2:.3f})")
        axes[r, 0].legend(fontsize=7)
    fig.suptitle(title or f"eval trial {trial}: predicted vs true rates "
                          "(dotted line: start of forward prediction)")
    fig.tight_layout()
    return _save(fig, path)


def _r2(true: np.ndarray, pred: np.ndarray) -> float:
    """R2 of predicted against true rates over every trial, bin and neuron."""
    t = np.asarray(true, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    denom = np.sum((t - t.mean()) ** 2)
    return float(1 - np.sum((t - p) ** 2) / denom) if denom > 0 else float("nan")
