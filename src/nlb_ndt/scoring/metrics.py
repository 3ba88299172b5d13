"""Scores computed here rather than by nlb_tools' full `evaluate`: co-bps alone.

The trainer scores every validation and the ensemble sweeps score every candidate mean;
both need only the held-out neurons' bits per spike, which nlb_tools computes with
`bits_per_spike`. Pure numpy; nlb_tools is imported on first use, so importing this
module stays light.
"""

from __future__ import annotations

import numpy as np


def co_bps(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Co-smoothing bits per spike (nlb_tools' formula; NaN spikes are ignored).

    Args:
        rates: (trials, bins, held-out neurons) predicted rates, spikes per bin.
        spikes: the same shape, observed held-out counts (NaN where unscored).
    """
    from nlb_tools.evaluation import bits_per_spike  # pulls in sklearn; only when scoring

    # bits_per_spike replaces zero rates in place, so it only ever sees a copy.
    return float(bits_per_spike(np.array(rates, dtype=np.float64),
                                np.asarray(spikes, dtype=np.float64)))
