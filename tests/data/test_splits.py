"""The trainer's typed splits: NaN handling, the forward concatenation, seeded subsets."""

from __future__ import annotations

import numpy as np
import torch

from nlb_ndt.data.splits import SplitTensors, random_subset, split_tensors


def _arrays(prefix: str, b=5, t_obs=6, t_fwd=2, n_in=3, n_out=2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def counts(*shape):
        return rng.poisson(1.0, size=shape).astype(np.float64)

    return {f"{prefix}_spikes_heldin": counts(b, t_obs, n_in),
            f"{prefix}_spikes_heldout": counts(b, t_obs, n_out),
            f"{prefix}_spikes_heldin_forward": counts(b, t_fwd, n_in),
            f"{prefix}_spikes_heldout_forward": counts(b, t_fwd, n_out)}


def test_split_tensors_zeroes_heldin_nan_and_keeps_label_nan(caplog):
    """Verify float32 tensors, NaN held-in counts fed as 0 (with a warning) and NaN kept in
    the held-out counts, where it means "not scored"."""
    arrays = _arrays("eval")
    arrays["eval_spikes_heldin"][1, 2, 0] = np.nan
    arrays["eval_spikes_heldout"][3, 4, 1] = np.nan
    split = split_tensors(arrays, "eval")
    assert split.heldin.dtype == torch.float32 and split.n_trials == 5
    assert split.heldin[1, 2, 0] == 0 and not torch.isnan(split.heldin).any()
    assert torch.isnan(split.heldout[3, 4, 1]) and int(torch.isnan(split.heldout).sum()) == 1
    assert "1 NaN held-in counts in the eval split" in caplog.text
    kept = torch.from_numpy(arrays["eval_spikes_heldout"]).float()
    torch.testing.assert_close(split.heldout, kept, equal_nan=True)


def test_forward_concatenates_heldin_then_heldout_neurons():
    """Verify forward is (B, T_fwd, N_in + N_out), held-in neurons first."""
    arrays = _arrays("train")
    split = split_tensors(arrays, "train")
    assert split.forward.shape == (5, 2, 5)
    np.testing.assert_array_equal(split.forward[..., :3].numpy(),
                                  arrays["train_spikes_heldin_forward"])
    np.testing.assert_array_equal(split.forward[..., 3:].numpy(),
                                  arrays["train_spikes_heldout_forward"])


def test_random_subset_is_seeded_and_whole_fraction_is_identity():
    """Verify the same seed picks the same trials, another seed others, at least one trial
    is kept, and fraction 1 returns the split object itself."""
    n = 40
    split = SplitTensors(torch.arange(n, dtype=torch.float32).view(n, 1, 1),
                         torch.zeros(n, 1, 1), torch.zeros(n, 1, 2))
    assert random_subset(split, 1.0, seed=0) is split
    a, b = random_subset(split, 0.25, seed=3), random_subset(split, 0.25, seed=3)
    assert a.n_trials == 10 and torch.equal(a.heldin, b.heldin)
    assert not torch.equal(a.heldin, random_subset(split, 0.25, seed=4).heldin)
    assert len(set(a.heldin.flatten().tolist())) == 10  # no trial twice
    assert random_subset(split, 0.001, seed=0).n_trials == 1
