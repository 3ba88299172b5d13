"""Condition PSTHs of the NLB evaluation targets, as nlb_tools makes them, in little memory.

`make_eval_target_tensors(..., include_psth=True)` adds `psth`, `eval_cond_idx`,
`train_cond_idx` (and `eval_jitter` / `train_jitter` for DMFC) through nlb_tools'
`_make_psth`, which reloads the NWB files and smooths every neuron over the whole session
at 1 ms in float64, with a process pool: about 20 GB for an MC_Maze-sized session, more
than the 16 GB this project targets. `add_psth` gives the same arrays (equal to rounding;
a test compares them) by smoothing only the 1 ms stretches under the PSTH windows:

1. reload the 1 ms spikes of the same files (as nlb_tools does);
2. for every PSTH window, smooth its 1 ms spikes plus a kernel-wide margin with nlb_tools'
   Gaussian (same length, same 'same'-mode centring, NaN runs kept apart and zero-padded at
   their edges, negative FFT residue clipped) and sum them into the bins;
3. run nlb_tools' own `make_trial_data` on that sparse binned frame per condition and
   average, with `_make_psth`'s rules (drop trials shorter than 0.8 x the mean length,
   cut to the shortest, pad to `seg_len` with NaN at the front or back).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd
from scipy import signal

logger = logging.getLogger(__name__)

SPIKE_FIELDS = ["spikes", "heldout_spikes"]


def add_psth(group: dict, ds, dataset_name: str, *, train_split, eval_split, seed: int = 0,
             skip_fields: list[str] | None = None) -> dict:
    """Add nlb_tools' PSTH entries to one target group made with include_psth=False.

    Args:
        group: `make_eval_target_tensors(...)[group_name]` (changed in place and returned).
        ds: the binned NWBDataset the targets were made from (its `fpath` is reloaded).
        dataset_name: NLB dataset name (selects nlb_tools' PARAMS).
        train_split, eval_split: the splits given to make_eval_target_tensors.
        seed: the seed given to make_eval_target_tensors (DMFC jitter).
        skip_fields: behaviour series not to load again (any names; unknown ones ignored).
    """
    from nlb_tools.make_tensors import PARAMS, _prep_jitter, _prep_mask

    params = PARAMS[dataset_name]
    psth_params = params.get("psth_params")
    if psth_params is None:  # MC_RTT has no PSTH metric
        return group
    train_mask = np.asarray(_prep_mask(ds, train_split))
    eval_mask = np.asarray(_prep_mask(ds, eval_split))
    if isinstance(eval_split, str) and eval_split == "test":
        ignore_mask = (ds.trial_info.split == "none").to_numpy()
    else:
        ignore_mask = ~(train_mask | eval_mask)

    train_idx, eval_idx, psth = condition_psths(
        ds, train_mask, eval_mask, ignore_mask, skip_fields=skip_fields, **psth_params)
    group["eval_cond_idx"] = eval_idx
    group["train_cond_idx"] = train_idx
    group["psth"] = psth
    jitter = params.get("jitter")
    if jitter is not None:
        # make_eval_target_tensors draws both from numpy's global RNG reseeded each time.
        for name, mask in (("train_jitter", train_mask), ("eval_jitter", eval_mask)):
            np.random.seed(seed)
            vals = _prep_jitter(ds, mask, jitter)
            group[name] = (vals / ds.bin_width).round().astype(int)
    return group


def condition_psths(ds, train_mask, eval_mask, ignore_mask, *, make_params: dict,
                    cond_fields, kern_sd: float, pad: str = "back", seg_len=None,
                    skip_mask=None, skip_fields: list[str] | None = None, **_unused):
    """(train_cond_idx, eval_cond_idx, psth) with the semantics of nlb_tools' `_make_psth`.

    Returns:
        Two 1-D object arrays of int arrays (trial indices within the train / eval trials
        of each condition) and psth (conditions, bins, neurons) float64, NaN-padded.
    """
    bin_ms = ds.bin_width
    trial_info = ds.trial_info
    columns = ds.data[SPIKE_FIELDS].columns
    if isinstance(cond_fields, str):
        cond_fields = [cond_fields]
    skip = np.zeros(len(trial_info), bool) if skip_mask is None else np.asarray(
        skip_mask(trial_info) if callable(skip_mask) else skip_mask, bool)

    combos = sorted(trial_info[~ignore_mask][cond_fields].dropna().set_index(cond_fields)
                    .index.unique().tolist())
    in_cond = [np.all(trial_info[cond_fields] == c, axis=1).to_numpy() for c in combos]
    used = np.zeros(len(trial_info), bool)
    if combos:
        used = np.any(in_cond, axis=0) & ~ignore_mask & ~skip

    smoothed = copy.copy(ds)
    smoothed.data = _smoothed_windows(ds, columns, make_params, used, kern_sd, skip_fields)

    align = make_params.get("align_field", "start_time")
    train_ids = trial_info[train_mask][["trial_id", align]].dropna().trial_id.to_numpy()
    eval_ids = trial_info[eval_mask][["trial_id", align]].dropna().trial_id.to_numpy()
    psths, train_idx, eval_idx = [], [], []
    for combo, mask in zip(combos, in_cond):
        if not np.any(mask & ~ignore_mask & ~skip):
            logger.warning("no trials for condition %s; dropped", combo)
            continue
        data = smoothed.make_trial_data(ignored_trials=~mask | ignore_mask | skip,
                                        allow_nans=True, **make_params)
        lengths = data.groupby("trial_id").size()
        short = lengths.index[lengths < 0.8 * lengths.mean()]
        data = data[~np.isin(data.trial_id, short)]
        min_len = int(data.groupby("trial_id").size().min())
        mean = data.groupby("align_time")[data[SPIKE_FIELDS].columns].mean().to_numpy()
        psths.append(mean[:min_len] if pad == "back" else mean[-min_len:])
        train_idx.append(np.sort(np.flatnonzero(np.isin(train_ids, data.trial_id))))
        eval_idx.append(np.sort(np.flatnonzero(np.isin(eval_ids, data.trial_id))))

    max_len = (max(len(p) for p in psths) if seg_len is None
               else int(round(seg_len / bin_ms)))
    stacked = np.full((len(psths), max_len, len(columns)), np.nan)
    for i, p in enumerate(psths):
        p = p[:max_len] if pad == "back" else p[len(p) - min(len(p), max_len):]
        if pad == "back":
            stacked[i, :len(p)] = p
        else:
            stacked[i, max_len - len(p):] = p
    return _ragged(train_idx), _ragged(eval_idx), stacked


def _smoothed_windows(ds, columns, make_params: dict, used: np.ndarray, kern_sd: float,
                      skip_fields) -> pd.DataFrame:
    """Binned, 1 ms-smoothed spikes on the bins under the windows of the `used` trials only."""
    from nlb_tools.nwb_interface import NWBDataset

    bin_ms = int(ds.bin_width)
    # Bins under every window, without truncation at the next trial (a superset of what
    # the per-condition calls, which may truncate, will ask for).
    windows = ds.make_trial_data(ignored_trials=~used, allow_nans=True,
                                 **{**make_params, "allow_overlap": True})
    clock_ms = windows.clock_time.dt.total_seconds().to_numpy() * 1000
    bins_ms = np.unique(clock_ms.round().astype(np.int64))
    del windows

    raw = NWBDataset(ds.fpath, ds.prefix, skip_fields=list(skip_fields or ()))
    spikes = raw.data.loc[:, columns].to_numpy()  # (T, N) float16 at 1 ms
    del raw
    kernel = signal.windows.gaussian(int(6 * kern_sd), kern_sd, sym=True)
    kernel /= kernel.sum()
    margin = len(kernel)

    out = np.full((len(bins_ms), spikes.shape[1]), np.nan)
    # Runs of consecutive bins: each smoothed in one piece with a margin on both sides.
    breaks = np.flatnonzero(np.diff(bins_ms) != bin_ms) + 1
    for run in np.split(np.arange(len(bins_ms)), breaks):
        lo, hi = int(bins_ms[run[0]]), int(bins_ms[run[-1]]) + bin_ms
        a, b = max(lo - margin, 0), min(hi + margin, len(spikes))
        smooth = _smooth_block(spikes[a:b], kernel)[lo - a:hi - a]
        if len(smooth) < hi - lo:  # a last, partial bin: pad as nlb_tools' resample sums
            smooth = np.vstack([smooth, np.zeros((hi - lo - len(smooth), smooth.shape[1]))])
        binned = smooth.reshape(len(run), bin_ms, -1)
        first_nan = np.isnan(binned[:, 0])  # resample: NaN where the bin's first ms is NaN
        sums = np.nansum(binned, axis=1)
        sums[first_nan] = np.nan
        out[run] = sums
    index = pd.to_timedelta(bins_ms, unit="ms")
    index.name = "clock_time"
    return pd.DataFrame(out, index=index, columns=columns)


def _smooth_block(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """nlb_tools' smooth_column with ignore_nans, for columns sharing one NaN pattern per
    group: NaN runs stay NaN; each NaN-free run is convolved alone ('same' mode)."""
    x = x.astype(np.float64)
    out = np.full_like(x, np.nan)
    nan = np.isnan(x)
    # Columns of one signal group share their NaN pattern (obs_intervals of the group's
    # first unit); handle each distinct pattern once.
    has_nan = nan.any(axis=0)
    groups: dict[bytes, list[int]] = {b"": list(np.flatnonzero(~has_nan))}
    for c in np.flatnonzero(has_nan):
        groups.setdefault(np.packbits(nan[:, c]).tobytes(), []).append(int(c))
    for cols in groups.values():
        if not cols:
            continue
        mask = nan[:, cols[0]]
        edges = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
        for seg in np.split(np.arange(len(mask)), edges):
            if len(seg) == 0 or mask[seg[0]]:
                continue
            y = signal.fftconvolve(x[seg[0]:seg[-1] + 1][:, cols], kernel[:, None],
                                   mode="same", axes=0)
            out[seg[0]:seg[-1] + 1, cols] = np.maximum(y, 0.0)
    return out


def _ragged(lists: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(lists), dtype=object)
    for i, ids in enumerate(lists):
        out[i] = np.asarray(ids, dtype=np.int64)
    return out
