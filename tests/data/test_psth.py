"""PSTH building blocks checked cheaply against nlb_tools itself.

(The full PSTH of a dataset is compared with nlb_tools' include_psth=True output in
test_preprocess.py, which needs the NWB files; this file needs none.)
"""

from __future__ import annotations

import numpy as np
import pytest
from nlb_tools.nwb_interface import smooth_column
from scipy import signal

from nlb_ndt.data.psth import _smooth_block, add_psth


def test_smooth_block_matches_nlb_tools_smooth_column_with_nans():
    """Verify the block smoother equals nlb_tools' per-column smoothing (ignore_nans): NaN
    runs stay NaN, each NaN-free run is convolved alone, nothing negative remains."""
    rng = np.random.default_rng(0)
    x = rng.poisson(0.3, size=(300, 6)).astype(np.float64)
    x[40:55, :3] = np.nan  # one NaN pattern for columns 0-2
    x[200:210, 4] = np.nan  # another for column 4; columns 3 and 5 have none
    kernel = signal.windows.gaussian(61, std=10)
    kernel /= kernel.sum()
    got = _smooth_block(x, kernel)
    for c in range(x.shape[1]):
        want = smooth_column((x[:, c].copy(), kernel, True, np.float64))
        np.testing.assert_allclose(got[:, c], want, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isnan(got[40:55, :3]).all() and not np.isnan(got[:, 3]).any()
    assert np.nanmin(got) >= 0


def test_add_psth_leaves_a_group_without_psth_params_alone():
    """Verify that MC_RTT (no PSTH metric in nlb_tools) gets no PSTH entries."""
    group = {"eval_spikes_heldout": np.zeros((2, 3, 4))}
    out = add_psth(group, None, "mc_rtt", train_split="train", eval_split="val")
    assert out is group and set(out) == {"eval_spikes_heldout"}
    with pytest.raises(KeyError):
        add_psth({}, None, "no_such_dataset", train_split="train", eval_split="val")
