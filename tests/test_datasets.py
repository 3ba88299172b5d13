"""The table of the seven NLB datasets: lookup errors, bins, groups, bin and phase checks."""

from __future__ import annotations

import pytest

from nlb_ndt.datasets import (
    DATASET_NAMES,
    DATASETS,
    SCALING_DATASETS,
    UnknownDatasetError,
    check_bin_ms,
    check_phase,
    get_spec,
    parse_group,
)


def test_get_spec_error_lists_every_valid_name():
    """Verify that an unknown name raises UnknownDatasetError (a ValueError) naming all seven."""
    with pytest.raises(UnknownDatasetError) as info:
        get_spec("mc_mice")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'mc_mice'" in message
    assert all(name in message for name in DATASET_NAMES) and len(DATASET_NAMES) == 7
    assert get_spec("dmfc_rsg") is DATASETS["dmfc_rsg"]


def test_bins_convert_5_ms_counts_to_20_ms():
    """Verify that bins(20) divides T_obs and T_fwd by four and bins() keeps 5 ms counts."""
    maze, dmfc = get_spec("mc_maze"), get_spec("dmfc_rsg")
    assert maze.bins() == (140, 40) and maze.bins(20) == (35, 10)
    assert dmfc.bins(20) == (75, 10)
    with pytest.raises(ValueError, match="not an NLB track"):
        maze.bins(10)


def test_groups_folders_and_scaling_flags():
    """Verify group names per bin size, the DANDI folder and which datasets are scaling ones."""
    spec = get_spec("mc_maze_small")
    assert spec.group(5) == "mc_maze_small" and spec.group(20) == "mc_maze_small_20"
    assert spec.folder == "000140/sub-Jenkins"
    assert spec.n_neurons == spec.n_heldin + spec.n_heldout == 142
    assert [n for n in DATASET_NAMES if get_spec(n).is_scaling] == list(SCALING_DATASETS)


def test_parse_group_reads_dataset_and_bin():
    """Verify that group names map to (dataset, bin_ms), the inverse of spec.group, and that
    unknown names are refused."""
    assert parse_group("mc_maze") == ("mc_maze", 5)
    assert parse_group("mc_maze_small_20") == ("mc_maze_small", 20)
    for name in DATASET_NAMES:
        for bin_ms in (5, 20):
            assert parse_group(get_spec(name).group(bin_ms)) == (name, bin_ms)
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_group("mc_mice")
    with pytest.raises(UnknownDatasetError, match="'mc_mice'"):
        parse_group("mc_mice_20")


def test_check_bin_ms_and_check_phase():
    """Verify that valid values come back unchanged and others raise a ValueError naming them."""
    assert check_bin_ms(5) == 5 and check_bin_ms(20) == 20
    with pytest.raises(ValueError, match="bin size 10 ms is not an NLB track; use 5 or 20"):
        check_bin_ms(10)
    assert check_phase("val") == "val" and check_phase("test") == "test"
    with pytest.raises(ValueError, match="phase must be one of val, test, not 'train'"):
        check_phase("train")
