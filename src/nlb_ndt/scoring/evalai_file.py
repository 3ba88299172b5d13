"""The EvalAI submission file: build, check, write and read it.

Layout (NLB's EvalAI format): one group per dataset and bin size (`mc_maze`, `mc_maze_20`),
each holding six float32 arrays of rates in spikes per bin, shaped (trials, bins, neurons):

    train_rates_heldin   (n_train, T_obs, N_in)     train_rates_heldout  (n_train, T_obs, N_out)
    eval_rates_heldin    (n_eval,  T_obs, N_in)     eval_rates_heldout   (n_eval,  T_obs, N_out)
    eval_rates_heldin_forward  (n_eval, T_fwd, N_in)
    eval_rates_heldout_forward (n_eval, T_fwd, N_out)

Val phase: train = the train split, eval = the val split. Test phase: train = train+val,
eval = test. The three MC_Maze scaling datasets must share one file (the scorer reports them
together). Files are written with nlb_tools' `save_to_h5` (float32, gzip) to a temporary
name and then renamed, so a half-written file never carries the final name.

Every file read here is checked first; a problem is reported as one line that names the
file, the array and what is wrong (`SubmissionError`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Mapping

import h5py
import numpy as np

from nlb_ndt.atomic import atomic_write
from nlb_ndt.datasets import RATE_KEYS, SCALING_DATASETS, get_spec, parse_group

log = logging.getLogger(__name__)

#: Arrays of a target (ground-truth) group that nlb_tools' `evaluate` always reads.
TARGET_KEYS = ("eval_spikes_heldout", "train_behavior", "eval_behavior")

Shape = tuple  # (trials | None, bins, neurons); None matches any trial count


class SubmissionError(ValueError):
    """A submission or target file (or dict) that cannot be scored; one line."""


def group_shapes(dataset: str, *, bin_ms: int = 5, n_train: int | None = None,
                 n_eval: int | None = None, n_heldin: int | None = None,
                 n_heldout: int | None = None) -> dict[str, Shape]:
    """Expected shape of each of the six arrays of `dataset` at `bin_ms`.

    Bins come from the dataset table. Neuron counts default to the table; trial counts
    default to "any", because they should come from the data actually used (the table's
    DMFC trial counts are stale and synthetic data has its own): pass them from the
    tensors or the target (`trial_counts`).
    """
    spec = get_spec(dataset)
    t_obs, t_fwd = spec.bins(bin_ms)
    n_in = spec.n_heldin if n_heldin is None else int(n_heldin)
    n_out = spec.n_heldout if n_heldout is None else int(n_heldout)
    return {
        "train_rates_heldin": (n_train, t_obs, n_in),
        "train_rates_heldout": (n_train, t_obs, n_out),
        "eval_rates_heldin": (n_eval, t_obs, n_in),
        "eval_rates_heldout": (n_eval, t_obs, n_out),
        "eval_rates_heldin_forward": (n_eval, t_fwd, n_in),
        "eval_rates_heldout_forward": (n_eval, t_fwd, n_out),
    }


def trial_counts(source: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Trial and neuron counts of a tensor dict (train_spikes_heldin, ...) or target group.

    Returns the keyword arguments of `group_shapes` that the source determines.
    """
    counts: dict[str, int] = {}
    if "train_spikes_heldin" in source:  # NDT tensors (val or test phase)
        counts["n_train"] = int(np.shape(source["train_spikes_heldin"])[0])
        counts["n_heldin"] = int(np.shape(source["train_spikes_heldin"])[2])
        if "train_spikes_heldout" in source:
            counts["n_heldout"] = int(np.shape(source["train_spikes_heldout"])[2])
        if "eval_spikes_heldin" in source:
            counts["n_eval"] = int(np.shape(source["eval_spikes_heldin"])[0])
        return counts
    if "train_behavior" in source:  # a target group: behaviour is per train trial
        counts["n_train"] = int(np.shape(source["train_behavior"])[0])
    if "eval_spikes_heldout" in source:
        counts["n_eval"] = int(np.shape(source["eval_spikes_heldout"])[0])
        counts["n_heldout"] = int(np.shape(source["eval_spikes_heldout"])[2])
    if "eval_spikes_heldin_forward" in source:
        counts["n_heldin"] = int(np.shape(source["eval_spikes_heldin_forward"])[2])
    return counts


def _fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"


def check_array(value, *, name: str, shape: Shape | None = None, where: str = "submission",
                allow_nan: bool = False, what: str = "rates") -> None:
    """Raise SubmissionError (one line) unless `value` is a finite, non-negative float array.

    Args:
        value: the array (numpy or h5py dataset; a group is an error).
        name: "group/key", used in the message.
        shape: expected shape; None entries match anything.
        where: the file (or "submission") the array came from.
        allow_nan: NaN is allowed (targets: NaN marks unscored bins).
        what: "rates" or "spikes", for the messages.
    """
    if isinstance(value, (h5py.Group, Mapping)):
        raise SubmissionError(f"{where}: {name} is a group; expected an array of {what}")
    arr = np.asarray(value[()] if isinstance(value, h5py.Dataset) else value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise SubmissionError(f"{where}: {name} has dtype {arr.dtype}; {what} must be "
                              f"floating point (float32)")
    if shape is not None:
        ok = arr.ndim == len(shape) and all(
            want is None or got == want for got, want in zip(arr.shape, shape))
        if not ok:
            raise SubmissionError(
                f"{where}: {name} has shape {arr.shape}; expected {_fmt_shape(shape)} "
                f"(trials, bins, neurons)")
    nan = np.isnan(arr)
    if not allow_nan and nan.any():
        first = tuple(int(i) for i in np.argwhere(nan)[0])
        raise SubmissionError(f"{where}: {name} contains {int(nan.sum())} NaN values "
                              f"(first at index {first})")
    inf = np.isinf(arr)
    if inf.any():
        first = tuple(int(i) for i in np.argwhere(inf)[0])
        raise SubmissionError(f"{where}: {name} contains {int(inf.sum())} infinite values "
                              f"(first at index {first})")
    negative = arr < 0  # NaN compares False, so allowed NaNs never count here
    if negative.any():
        raise SubmissionError(f"{where}: {name} contains {int(negative.sum())} negative "
                              f"{what} (min {float(arr[negative].min()):.4g})")


def check_submission(data: Mapping, expected: Mapping[str, Mapping[str, Shape]], *,
                     where: str = "submission") -> None:
    """Check that `data` has each expected group with its six valid arrays.

    Args:
        data: {group: {key: array}} (a dict or an open h5py.File).
        expected: {group: group_shapes(...)}.
        where: the file name, for messages.
    """
    for group, shapes in expected.items():
        if group not in data:
            present = ", ".join(sorted(data.keys())) or "none"
            raise SubmissionError(f"{where}: group {group!r} is missing "
                                  f"(groups present: {present})")
        node = data[group]
        if not isinstance(node, (Mapping, h5py.Group)):
            raise SubmissionError(f"{where}: {group} is an array; expected a group of "
                                  f"the six rate arrays")
        for key, shape in shapes.items():
            if key not in node:
                raise SubmissionError(f"{where}: {group}/{key} is missing")
            check_array(node[key], name=f"{group}/{key}", shape=shape, where=where)


def check_target(data: Mapping, groups: Iterable[str], *, where: str = "target") -> None:
    """Check a ground-truth dict / file for the arrays `evaluate` reads, per group.

    Spikes may hold NaN (unscored bins, as in DMFC) but no inf and no negative counts.
    """
    for group in groups:
        if group not in data:
            present = ", ".join(sorted(data.keys())) or "none"
            raise SubmissionError(f"{where}: group {group!r} is missing "
                                  f"(groups present: {present})")
        node = data[group]
        for key in TARGET_KEYS:
            if key not in node:
                raise SubmissionError(f"{where}: {group}/{key} is missing")
        dataset, bin_ms = parse_group(group)
        t_obs, t_fwd = get_spec(dataset).bins(bin_ms)
        shapes = {"eval_spikes_heldout": (None, t_obs, None),
                  "eval_spikes_heldin_forward": (None, t_fwd, None),
                  "eval_spikes_heldout_forward": (None, t_fwd, None)}
        for key, shape in shapes.items():
            if key in node:
                check_array(node[key], name=f"{group}/{key}", shape=shape, where=where,
                            allow_nan=True, what="spikes")


def build_submission(rates: Mapping[str, Mapping[str, np.ndarray]], *,
                     expected: Mapping[str, Mapping[str, Shape]] | None = None,
                     ) -> dict[str, dict[str, np.ndarray]]:
    """{group: six arrays} as float32, checked; other keys are dropped.

    Args:
        rates: {group: {key: rates}} with at least the six RATE_KEYS per group.
        expected: {group: group_shapes(...)}; default: shapes from the dataset table
            (neurons and bins checked, trial counts not).
    """
    if expected is None:
        expected = {}
        for group in rates:
            dataset, bin_ms = parse_group(group)
            expected[group] = group_shapes(dataset, bin_ms=bin_ms)
    out = {group: {key: np.asarray(rates[group][key], dtype=np.float32) for key in RATE_KEYS
                   if key in rates[group]}
           for group in rates}
    check_submission(out, expected)
    return out


def warn_scaling(groups: Iterable[str]) -> None:
    """Log a warning when a file holds some but not all of the three scaling datasets."""
    for suffix in ("", "_20"):
        present = [d for d in SCALING_DATASETS if f"{d}{suffix}" in groups]
        if present and len(present) < len(SCALING_DATASETS):
            missing = [d for d in SCALING_DATASETS if d not in present]
            log.warning("the file holds %s but not %s; EvalAI scored the three scaling "
                        "datasets only when they were in one file", ", ".join(present),
                        ", ".join(missing))


def write_submission(data: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, *,
                     overwrite: bool = False) -> Path:
    """Write {group: arrays} with nlb_tools' `save_to_h5` (float32, gzip), atomically.

    Raises FileExistsError if `path` exists and `overwrite` is False.
    """
    from nlb_tools.make_tensors import save_to_h5  # nlb_tools' own writer; imported on use

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    log.info("writing %s (groups: %s)", path, ", ".join(data))
    with atomic_write(path) as tmp:
        save_to_h5({g: {k: np.asarray(v) for k, v in arrays.items()}
                    for g, arrays in data.items()}, str(tmp), overwrite=True)
    return path


def read_h5(path: str | Path, *, what: str = "submission",
            groups: Iterable[str] | None = None) -> dict:
    """An h5 file as a nested dict of arrays; one-line errors for a missing or non-HDF5 file.

    Args:
        path: the file.
        what: "submission" or "target", for the messages.
        groups: read only these top-level entries (those present); default all.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{what} file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            keys = list(f.keys()) if groups is None else [g for g in groups if g in f]
            return {key: _to_dict(f[key]) if isinstance(f[key], h5py.Group) else f[key][()]
                    for key in keys}
    except OSError as exc:
        raise SubmissionError(f"{path}: not a readable HDF5 file ({exc})") from None


def _to_dict(node: h5py.Group) -> dict:
    return {key: _to_dict(item) if isinstance(item, h5py.Group) else item[()]
            for key, item in node.items()}


def read_submission(path: str | Path, *, expected: Mapping[str, Mapping[str, Shape]] | None
                    = None) -> dict[str, dict[str, np.ndarray]]:
    """Read and check a submission file.

    Args:
        path: the h5 file.
        expected: {group: group_shapes(...)} to require; default: every group found
            (datasets from their names, shapes from the table, trial counts unchecked).
    """
    data = read_h5(path)
    if expected is None:
        expected = {}
        for group in data:
            try:
                dataset, bin_ms = parse_group(group)
            except ValueError:
                raise SubmissionError(f"{path}: group {group!r} is not an NLB dataset "
                                      f"(mc_maze, mc_maze_20, ...)") from None
            expected[group] = group_shapes(dataset, bin_ms=bin_ms)
        if not expected:
            raise SubmissionError(f"{path}: the file has no groups")
    check_submission(data, expected, where=str(path))
    return data
