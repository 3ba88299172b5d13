"""Mean-of-rates ensembles, the ensemble-size sweep, greedy selection and the mean rates of
checkpoint files (nlb_ndt.scoring.ensemble)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nlb_ndt.scoring.ensemble import (
    RunningMean,
    choose_size,
    ensemble_curve,
    ensemble_rates,
    greedy_selection,
    member_counts,
)
from nlb_ndt.scoring.metrics import co_bps


def _truth(seed: int = 0, shape=(40, 30, 12)):
    """Smooth true rates (spikes/bin) and Poisson spikes drawn from them."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, shape[1])[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (shape[0], 1, shape[2]))
    rates = 0.3 + 0.25 * (1 + np.sin(t + phase))
    return rates, rng.poisson(rates).astype(np.float64)


def _noisy_members(rates, n: int, seed: int = 1, sigma: float = 0.5):
    """Independently noisy copies of the true rates: genuinely different 'models'."""
    rng = np.random.default_rng(seed)
    return [(rates * np.exp(sigma * rng.standard_normal(rates.shape))).astype(np.float32)
            for _ in range(n)]


def _mean(members, counts=None) -> dict[str, np.ndarray]:
    """RunningMean of rate dicts, each added once or `counts[i]` times in one add."""
    running = RunningMean()
    for i, member in enumerate(members):
        running.add(member, count=1 if counts is None else counts[i])
    return running.mean()


def test_running_mean_averages_each_array_as_float32():
    """Verify that RunningMean averages key by key and returns float32."""
    a = {"x": np.full((2, 3), 1.0, np.float32), "y": np.zeros((1, 2), np.float32)}
    b = {"x": np.full((2, 3), 2.0, np.float32), "y": np.ones((1, 2), np.float32)}
    c = {"x": np.full((2, 3), 6.0, np.float32), "y": np.full((1, 2), 2.0, np.float32)}
    out = _mean([a, b, c])
    assert out["x"].dtype == np.float32 and out["y"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], np.full((2, 3), 3.0))
    np.testing.assert_array_equal(out["y"], np.ones((1, 2)))


def test_running_mean_matches_stacked_mean_and_copies_first_member():
    """Verify that the streamed mean equals np.mean of the stack and never aliases a member."""
    members = _noisy_members(_truth()[0], 5)
    running = RunningMean()
    for m in members:
        running.add({"r": m})
    first = members[0].copy()
    out = running.mean()["r"]
    np.testing.assert_allclose(out, np.stack(members).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(members[0], first)
    assert running.count == 5


def test_running_mean_rejects_mismatched_members():
    """Verify that a member with another shape or other keys is refused by name."""
    running = RunningMean()
    running.add({"r": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="r has shape"):
        running.add({"r": np.zeros((3, 2))})
    with pytest.raises(ValueError, match="arrays"):
        running.add({"q": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="at least one member"):
        RunningMean().mean()


def test_ensemble_curve_equals_co_bps_of_each_top_n_mean():
    """Verify that curve[N-1] is the co-bps of the float32 mean of the first N members."""
    rates, spikes = _truth()
    members = _noisy_members(rates, 6)
    curve = ensemble_curve(iter(members), spikes)
    assert curve.shape == (6,)
    for n in (1, 3, 6):
        direct = co_bps(np.mean(np.stack(members[:n]).astype(np.float64), axis=0)
                        .astype(np.float32), spikes)
        assert curve[n - 1] == pytest.approx(direct, abs=1e-9)


def test_ensemble_curve_stops_at_max_size_and_checks_shapes():
    """Verify that max_size caps the sweep and a wrongly shaped member is refused."""
    rates, spikes = _truth()
    members = _noisy_members(rates, 6)
    assert ensemble_curve(members, spikes, max_size=4).shape == (4,)
    with pytest.raises(ValueError, match="member 2"):
        ensemble_curve([members[0], members[1][:, :-1]], spikes)


def test_choose_size_takes_argmax_smallest_on_ties_and_skips_nan():
    """Verify that choose_size returns the 1-based argmax, the smallest N on ties, no NaN."""
    assert choose_size(np.array([0.10, 0.30, 0.25])) == 2
    assert choose_size(np.array([0.10, 0.30, 0.30, 0.2])) == 2
    assert choose_size(np.array([np.nan, 0.1, 0.05])) == 2
    with pytest.raises(ValueError):
        choose_size(np.array([np.nan, np.nan]))


def test_ensemble_of_noisy_models_beats_best_single_and_argmax_is_chosen():
    """Verify that averaging independent models raises val co-bps above the best single."""
    rates, spikes = _truth(seed=3)
    members = _noisy_members(rates, 12, seed=4)
    members.sort(key=lambda m: co_bps(m, spikes), reverse=True)  # rank by co-bps
    curve = ensemble_curve(members, spikes)
    n = choose_size(curve)
    assert curve[n - 1] == curve.max()
    assert n > 1
    assert curve[n - 1] > curve[0] + 0.01


def _ranked(members, spikes):
    """Members sorted by single val co-bps, best first (the ranking's order)."""
    return sorted(members, key=lambda m: co_bps(m, spikes), reverse=True)


def _gain_member(rates, gain_a: float, gain_b: float):
    """The true rates scaled by gain_a on neurons 0-1 and gain_b on neurons 2-3."""
    return (rates * np.array([gain_a, gain_a, gain_b, gain_b])).astype(np.float32)


def _counterexample():
    """Four ranked snapshots where plain forward selection misses the top-3 mean.

    A over-predicts neurons 0-1; B and C err in opposite directions on neurons 2-3 and
    partly undo A, so A+B+C is nearly unbiased. D under-predicts neurons 0-1 by about
    A's error, so A+D is the best pair (greedy's step 2), but nothing added to A+D
    reaches A+B+C.
    """
    rates, spikes = _truth(seed=5, shape=(200, 30, 4))
    s = 0.4
    members = [_gain_member(rates, 1 + s, 1.0),              # A
               _gain_member(rates, 1 - s / 2, 1 + 0.9 * s),  # B
               _gain_member(rates, 1 - s / 2, 1 - 0.9 * s),  # C
               _gain_member(rates, 1 - 1.3 * s, 1.0)]        # D
    singles = [co_bps(m, spikes) for m in members]
    assert singles == sorted(singles, reverse=True)  # A, B, C, D is the ranking
    return members, spikes


def test_greedy_fields_are_consistent_with_its_curve():
    """Verify curve[k] is the co-bps of the mean of steps[:k+1], and best_n, members (in
    order of first pick), counts(size) and the mean with those multiplicities."""
    rates, spikes = _truth(seed=3)
    members = _ranked(_noisy_members(rates, 6, seed=4), spikes)
    sel = greedy_selection(members, spikes, max_steps=8)
    assert len(sel.steps) == 8 and sel.curve.shape == (8,)
    for k in range(8):
        mean = _mean({"r": members[i]} for i in sel.steps[:k + 1])["r"]
        assert sel.curve[k] == pytest.approx(co_bps(mean, spikes), abs=1e-9)
        assert sel.counts(k + 1) == dict(Counter(sel.steps[:k + 1]))
        assert list(sel.counts(k + 1)) == list(dict.fromkeys(sel.steps[:k + 1]))
    assert sel.best_n == choose_size(sel.curve)
    assert sel.members == sel.counts() == dict(Counter(sel.steps[:sel.best_n]))
    assert list(sel.members) == list(dict.fromkeys(sel.steps[:sel.best_n]))
    # The chosen ensemble is the weighted mean of the candidates, multiplicity / best_n.
    weights = np.zeros(len(members))
    for index, count in sel.members.items():
        weights[index] = count / sel.best_n
    assert weights.sum() == pytest.approx(1.0)
    submission = _mean([{"r": members[i]} for i in sel.members],
                       counts=list(sel.members.values()))["r"]
    np.testing.assert_allclose(submission, np.tensordot(weights, np.stack(members), axes=1),
                               rtol=1e-6)
    assert co_bps(submission, spikes) == pytest.approx(sel.best_cobps, abs=1e-6)
    with pytest.raises(ValueError, match="greedy ensemble size must be in 1..8"):
        sel.counts(9)


def test_greedy_is_at_least_top_n_at_every_size_on_independent_models():
    """Verify greedy >= top-N at every size where it holds (independent noisy models).

    Per-size dominance is not guaranteed in general (see the counterexample test); on
    independently noisy models of similar quality it holds, and the best is >= top-N's.
    """
    rates, spikes = _truth(seed=3)
    members = _ranked(_noisy_members(rates, 10, seed=4), spikes)
    top = ensemble_curve(members, spikes)
    for init in ("best", "sorted"):
        sel = greedy_selection(members, spikes, max_steps=10, init=init)
        assert sel.curve[0] == pytest.approx(top[0], abs=1e-12)
        assert np.all(sel.curve >= top - 1e-12), init
        assert sel.best_cobps >= top.max()


def test_greedy_repeats_an_accurate_snapshot_among_biased_ones():
    """Verify that the best snapshot enters several times and beats every top-N mean.

    The best snapshot under-predicts by 10 %, the others over-predict by 30-60 %; the
    unbiased mix is about three parts best to one part of the 30 % one, which only a
    selection with replacement can make.
    """
    rates, spikes = _truth(seed=7, shape=(100, 30, 12))
    rng = np.random.default_rng(8)
    noisy = [(rates * gain * np.exp(0.05 * rng.standard_normal(rates.shape)))
             .astype(np.float32) for gain in (0.9, 1.3, 1.4, 1.5, 1.6)]
    members = _ranked(noisy, spikes)
    assert members[0] is noisy[0]
    top = ensemble_curve(members, spikes)
    for init in ("best", "sorted"):
        sel = greedy_selection(members, spikes, max_steps=6, init=init)
        assert sel.members[0] >= 2, init
        assert sel.best_cobps > top.max() + 1e-3, init


def test_plain_forward_selection_can_fall_below_top_n_but_sorted_init_cannot():
    """Verify the documented guarantees on a counterexample built for plain greedy.

    init="best" takes A+D at step 2 (>= top-2, as guaranteed), then is below top-3 at
    size 3 and its best never reaches top-3; init="sorted" starts from the top-3 prefix
    and so keeps an ensemble at least as good as the best top-N.
    """
    members, spikes = _counterexample()
    top = ensemble_curve(members, spikes)
    assert choose_size(top) == 3
    plain = greedy_selection(members, spikes, max_steps=4, init="best")
    assert plain.steps[:2] == [0, 3] and plain.init_size == 0
    assert plain.curve[0] == pytest.approx(top[0], abs=1e-12)
    assert plain.curve[1] >= top[1]
    assert plain.curve[2] < top[2] - 1e-3
    assert plain.best_cobps < top.max()
    sorted_init = greedy_selection(members, spikes, max_steps=4)
    assert sorted_init.init_size == 3 and sorted_init.steps[:3] == [0, 1, 2]
    np.testing.assert_array_equal(sorted_init.curve[:3], top[:3])
    assert sorted_init.best_cobps >= top.max()
    assert len(sorted_init.steps) == 4


def test_greedy_best_init_starts_from_the_best_single_even_if_misranked():
    """Verify init="best" starts from the argmax single co-bps, not blindly index 0."""
    rates, spikes = _truth(seed=3)
    members = _ranked(_noisy_members(rates, 5, seed=4), spikes)[::-1]  # worst first
    sel = greedy_selection(members, spikes, max_steps=2, init="best")
    assert sel.steps[0] == 4
    assert sel.curve[0] == pytest.approx(co_bps(members[4], spikes), abs=1e-12)


def test_greedy_on_memmaps_equals_in_memory(tmp_path):
    """Verify that memmapped candidates give exactly the in-memory result."""
    rates, spikes = _truth(seed=3)
    members = _ranked(_noisy_members(rates, 5, seed=4), spikes)
    maps = []
    for i, m in enumerate(members):
        np.save(tmp_path / f"m{i}.npy", m)
        maps.append(np.load(tmp_path / f"m{i}.npy", mmap_mode="r"))
    assert isinstance(maps[0], np.memmap)
    for init in ("best", "sorted"):
        in_memory = greedy_selection(members, spikes, max_steps=6, init=init)
        mapped = greedy_selection(maps, spikes, max_steps=6, init=init)
        assert mapped.steps == in_memory.steps
        np.testing.assert_array_equal(mapped.curve, in_memory.curve)
        assert (mapped.best_n, mapped.members) == (in_memory.best_n, in_memory.members)


def test_greedy_ties_take_the_lowest_index_deterministically():
    """Verify that exact duplicates never displace the first copy, run after run."""
    rates, spikes = _truth(seed=3)
    a, b = _ranked(_noisy_members(rates, 2, seed=4), spikes)
    members = [a, a.copy(), b, b.copy()]
    first = greedy_selection(members, spikes, max_steps=6, init="best")
    assert set(first.steps) <= {0, 2}
    again = greedy_selection(members, spikes, max_steps=6, init="best")
    assert again.steps == first.steps
    np.testing.assert_array_equal(again.curve, first.curve)
    flat = np.array([0.2, 0.3, 0.3, 0.1])
    assert choose_size(flat) == 2  # the curve's ties also go to the earliest prefix


def test_greedy_rejects_bad_arguments():
    """Verify the argument checks: steps, init, shapes (named by index), no candidates."""
    rates, spikes = _truth()
    members = _noisy_members(rates, 3)
    with pytest.raises(ValueError, match="max_steps"):
        greedy_selection(members, spikes, max_steps=0)
    with pytest.raises(ValueError, match="init"):
        greedy_selection(members, spikes, max_steps=2, init="random")
    with pytest.raises(ValueError, match="candidate 1"):
        greedy_selection([members[0], members[1][:, :-1]], spikes, max_steps=2, init="best")
    with pytest.raises(ValueError, match="no candidates"):
        greedy_selection([], spikes, max_steps=2)


def test_running_mean_with_counts_equals_mean_of_repeated_members():
    """Verify that adding a member with count k equals adding it k times."""
    members = _noisy_members(_truth()[0], 3)
    dicts = [{"r": m, "q": m[:2]} for m in members]
    counts = [3, 1, 2]
    repeated = _mean([d for d, c in zip(dicts, counts) for _ in range(c)])
    weighted = _mean(dicts, counts=counts)
    for key in ("r", "q"):
        assert weighted[key].dtype == np.float32
        np.testing.assert_allclose(weighted[key], repeated[key], rtol=1e-6)
    with pytest.raises(ValueError, match="count"):
        RunningMean().add(dicts[0], count=0)


def test_member_counts_counts_list_repeats_and_takes_mapping_counts():
    """Verify the one multiplicity rule: a list counts each repeat in first-seen order, a
    mapping gives explicit counts, str and Path name one file, and bad input is refused."""
    assert member_counts(["b.pth", "a.pth", "b.pth"]) == {Path("b.pth"): 2, Path("a.pth"): 1}
    assert list(member_counts(["b.pth", "a.pth", "b.pth"])) == [Path("b.pth"), Path("a.pth")]
    assert member_counts({"a.pth": 2, Path("b.pth"): 1}) == {Path("a.pth"): 2,
                                                            Path("b.pth"): 1}
    assert member_counts(["a.pth", Path("a.pth")]) == {Path("a.pth"): 2}
    with pytest.raises(ValueError, match="at least one checkpoint"):
        member_counts([])
    with pytest.raises(ValueError, match="count must be >= 1"):
        member_counts({"a.pth": 0})


def test_ensemble_rates_list_with_repeat_equals_mapping_bit_for_bit(search):
    """Verify that ensemble_rates([a, a, b]) is (2a + b) / 3 and bit-for-bit equal to
    ensemble_rates({a: 2, b: 1}): a repeat in a list counts again."""
    from nlb_ndt.model.inference import snapshot_rates

    tensors = search["tensors"]
    a, b = (str(s["path"]) for s in search["snapshots"][:2])
    kw = {"train_heldin": tensors["train_spikes_heldin"],
          "eval_heldin": tensors["eval_spikes_heldin"]}
    listed = ensemble_rates([a, a, b], **kw)
    mapped = ensemble_rates({a: 2, b: 1}, **kw)
    rates_a, rates_b = (snapshot_rates(p, **kw)[0] for p in (a, b))
    for key, value in listed.items():
        np.testing.assert_array_equal(value, mapped[key])
        want = ((2 * rates_a[key].astype(np.float64) + rates_b[key]) / 3).astype(np.float32)
        np.testing.assert_array_equal(value, want)
        assert not np.array_equal(value, ensemble_rates([a, b], **kw)[key])
