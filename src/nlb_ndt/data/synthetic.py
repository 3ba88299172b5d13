"""The embedded synthetic NLB dataset: genuine NWB files with known ground-truth rates.

`generate(out_dir, like=...)` writes, in the DANDI layout of the named real dataset::

    out_dir/<dandiset>/<subject>/<train file>.nwb   train + val trials, all units, behaviour
    out_dir/<dandiset>/<subject>/<test file>.nwb    test trials, held-in units only
    out_dir/<dandiset>/SYNTHETIC.json               marker (like, seed, trials, version)
    out_dir/<dandiset>/synthetic_truth.h5           latents + readout = the true rates
    out_dir/eval_data_test.h5                       test-split ground truth, nlb_tools' layout

The files carry exactly what nlb_tools' `NWBDataset` reads from the real ones (trials table
with `split` and the alignment / condition columns of the dataset's PARAMS, units with
`spike_times`, `obs_intervals` and a boolean `heldout`, 1 ms behaviour in a processing
module), so every later stage runs on them unchanged. Spikes are Poisson at 1 ms from
log-linear readouts of low-dimensional latent dynamics (see `_synth_models`), so the
true rates exist and `true_rates()` returns them in nlb_tools' tensor layout.

Real data is never touched: a dandiset folder holding .nwb files without the marker, or an
`eval_data_test.h5` not written here, makes `generate` refuse with a one-line error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from nlb_ndt.atomic import write_text_atomic
from nlb_ndt.cli import make_parser, run
from nlb_ndt.data import synthetic_files as files
from nlb_ndt.data import synthetic_models as models
from nlb_ndt.datasets import (
    BEHAVIOR_FIELDS,
    DATASET_NAMES,
    SYNTHETIC_MARKER,
    DatasetSpec,
    check_bin_ms,
    check_phase,
    get_spec,
)

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MARKER = SYNTHETIC_MARKER
TRUTH = "synthetic_truth.h5"
EVAL_DATA_TEST = "eval_data_test.h5"


class RealDataError(RuntimeError):
    """The target folder holds files that were not written by this generator."""


def generate(out_dir: str | Path, like: str = "mc_maze_small", seed: int = 0, *,
             trials: Sequence[int] | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic dataset shaped like `like` under `out_dir` (an NLB_DATA_RAW).

    Re-running with the same arguments reuses a complete earlier output.

    Args:
        out_dir: root of the DANDI layout (what NLB_DATA_RAW points at).
        like: name of the real NLB dataset whose layout, sizes and task to imitate.
        seed: random seed; the content is a deterministic function of (like, seed, trials).
        trials: (n_train, n_val, n_test) to override the real dataset's trial counts
            (small sets for quick tests); default: the spec's counts.
        overwrite: replace an earlier synthetic set made with other arguments.

    Returns:
        The folder of the NWB files, `out_dir/<dandiset>/<subject>`.

    Raises:
        RealDataError: the dandiset folder or eval_data_test.h5 holds real data.
        FileExistsError: a different synthetic set is there and `overwrite` is False.
    """
    spec = get_spec(like)
    counts = _trial_counts(spec, trials)
    out_dir = Path(out_dir).expanduser().resolve()
    ds_dir = out_dir / spec.dandiset_id
    folder = out_dir / spec.folder
    eval_path = out_dir / EVAL_DATA_TEST
    wanted = {"synthetic": True, "like": like, "seed": int(seed), "trials": list(counts),
              "generator_version": GENERATOR_VERSION}

    _refuse_real_data(ds_dir, eval_path)
    if _reusable(ds_dir, spec, out_dir, wanted, overwrite=overwrite):
        logger.info("synthetic %s (seed %d) already complete in %s; reusing it",
                    like, seed, ds_dir)
        return folder

    logger.info("generating synthetic %s (seed %d, trials %s) into %s",
                like, seed, counts, ds_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # The marker goes first, so an interrupted run is still recognised as synthetic.
    _write_json(ds_dir / MARKER, {**wanted, "complete": False})

    sim = models.simulate(spec, seed=seed, counts=counts)
    train_path = ds_dir / spec.train_file
    test_path = ds_dir / spec.test_file
    files.write_nwb(train_path, spec, sim, sim.train, held_out=True, behavior=True, role="train")
    files.write_nwb(test_path, spec, sim, sim.test, held_out=False, behavior=False, role="test")
    files.write_truth(ds_dir / TRUTH, spec, sim, wanted)
    files.write_eval_data_test(eval_path, spec, sim, wanted)
    _write_json(ds_dir / MARKER, {
        **wanted, "complete": True,
        "files": [spec.train_file, spec.test_file, TRUTH, f"../{EVAL_DATA_TEST}"],
        "note": "Synthetic data written by nlb_ndt.synthetic; not a real DANDI dataset.",
    })
    logger.info("wrote %s and %s", train_path, test_path)
    return folder


def true_rates(data_raw: str | Path, like: str = "mc_maze_small", *, phase: str = "val",
               bin_ms: int = 5) -> dict[str, np.ndarray]:
    """The TRUE rates of a synthetic dataset as the six arrays of a submission group.

    The rates (expected spikes per bin) are put in place of the spike counts of an
    `NWBDataset` loaded from the files themselves and cut with nlb_tools' own tensor
    functions, so trials, windows, jitter and order match nlb_tools' tensors exactly.

    Args:
        data_raw: the `out_dir` given to `generate` (NLB_DATA_RAW).
        like: the dataset name given to `generate`.
        phase: "val" (train trials / val trials) or "test" (train+val / test trials).
        bin_ms: 5 or 20.

    Returns:
        {key: float32 array} for the keys in datasets.RATE_KEYS, in spikes per bin.
    """
    from nlb_tools.make_tensors import make_train_input_tensors
    from nlb_tools.nwb_interface import NWBDataset

    spec = get_spec(like)
    check_bin_ms(bin_ms)
    check_phase(phase)
    data_raw = Path(data_raw).expanduser().resolve()
    truth_path = data_raw / spec.dandiset_id / TRUTH
    if not truth_path.is_file():
        raise FileNotFoundError(
            f"no synthetic ground truth at {truth_path}; run `python -m nlb_ndt.synthetic "
            f"--out {data_raw} --like {like}`")
    truth = files.read_truth(truth_path)
    ds = NWBDataset(str(data_raw / spec.folder), skip_fields=list(BEHAVIOR_FIELDS))
    ds.resample(bin_ms)
    _put_true_rates(ds, spec, truth, bin_ms)

    split = ds.trial_info.split
    train_split = "train" if phase == "val" else ["train", "val"]
    eval_mask = (split == phase).to_numpy()
    train = make_train_input_tensors(ds, spec.name, trial_split=train_split, save_file=False)
    # make_train_input_tensors cuts eval trials with the same windows (and, for DMFC, the
    # same seeded jitter) as make_eval_input_tensors / make_eval_target_tensors, and gives
    # the forward window of make_eval_target_tensors too.
    ev = make_train_input_tensors(ds, spec.name, trial_split=eval_mask, save_file=False,
                                  include_forward_pred=True)
    out = {
        "train_rates_heldin": train["train_spikes_heldin"],
        "train_rates_heldout": train["train_spikes_heldout"],
        "eval_rates_heldin": ev["train_spikes_heldin"],
        "eval_rates_heldout": ev["train_spikes_heldout"],
        "eval_rates_heldin_forward": ev["train_spikes_heldin_forward"],
        "eval_rates_heldout_forward": ev["train_spikes_heldout_forward"],
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- safety


def _refuse_real_data(ds_dir: Path, eval_path: Path) -> None:
    if ds_dir.is_dir() and not (ds_dir / MARKER).is_file() and any(ds_dir.rglob("*.nwb")):
        raise RealDataError(
            f"{ds_dir} holds .nwb files without a {MARKER} marker (real DANDI data?); "
            "refusing to write synthetic data there, choose another --out")
    if eval_path.is_file():
        try:
            with h5py.File(eval_path, "r") as f:
                synthetic = bool(f.attrs.get("synthetic", False))
        except OSError:
            synthetic = False
        if not synthetic:
            raise RealDataError(
                f"{eval_path} was not written by nlb_ndt.synthetic (the real test-split "
                "ground truth?); refusing to modify it, choose another --out")


def _reusable(ds_dir: Path, spec: DatasetSpec, out_dir: Path, wanted: dict, *,
              overwrite: bool) -> bool:
    """Whether `ds_dir` already holds the complete set `wanted`; raises FileExistsError for
    another synthetic set unless `overwrite`."""
    marker = _read_marker(ds_dir)
    if marker is None:
        return False
    same = {k: marker.get(k) for k in wanted} == wanted
    if same and marker.get("complete") and _outputs_exist(spec, out_dir):
        return True
    if not same and not overwrite:
        raise FileExistsError(
            f"{ds_dir} holds synthetic data made with like={marker.get('like')}, "
            f"seed={marker.get('seed')}, trials={marker.get('trials')}; pass "
            "overwrite=True (--overwrite) to replace it, or choose another --out")
    return False


def _read_marker(ds_dir: Path) -> dict | None:
    path = ds_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _outputs_exist(spec: DatasetSpec, out_dir: Path) -> bool:
    ds_dir = out_dir / spec.dandiset_id
    if not all((ds_dir / p).is_file() for p in (spec.train_file, spec.test_file, TRUTH)):
        return False
    try:
        with h5py.File(out_dir / EVAL_DATA_TEST, "r") as f:
            return spec.group(5) in f and spec.group(20) in f
    except OSError:
        return False


def _trial_counts(spec: DatasetSpec, trials: Sequence[int] | None) -> tuple[int, int, int]:
    if trials is None:
        return spec.n_train, spec.n_val, spec.n_test
    counts = tuple(int(n) for n in trials)
    if len(counts) != 3 or min(counts) < 2:
        raise ValueError(f"trials must be three counts >= 2 (train, val, test), not {trials}")
    return counts  # type: ignore[return-value]


def _write_json(path: Path, obj: dict) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _put_true_rates(ds, spec: DatasetSpec, truth: dict, bin_ms: int) -> None:
    """Replace the binned spike counts of a loaded, resampled NWBDataset by true rates."""

    ti = ds.trial_info
    index = ds.data.index
    n_bins = len(index)
    ids = truth["unit_ids"]
    rates = np.zeros((n_bins, len(ids)), dtype=np.float64)
    row = 0
    # NWBDataset concatenates the folder's files in sorted name order (test before train).
    for fname in sorted(truth["files"]):
        entry = truth["files"][fname]
        n = len(entry["start_time_ms"])
        loaded = ti.start_time.iloc[row:row + n].dt.total_seconds().to_numpy() * 1000.0
        shift = loaded - entry["start_time_ms"]
        if len(loaded) != n or np.ptp(shift) > 1e-3 or shift[0] % bin_ms > 1e-6:
            raise ValueError(f"synthetic truth does not match the NWB files ({fname}); "
                             "regenerate the dataset")
        first = int(round(shift[0] / bin_ms))
        binned = models.binned_rates(entry["latents"], truth["readout_C"],
                                     truth["readout_b"], bin_ms)
        stop = min(first + len(binned), n_bins)
        rates[first:stop] = binned[: stop - first]
        row += n

    frames = []
    for field, mask in (("spikes", ~truth["heldout"]), ("heldout_spikes", truth["heldout"])):
        cols = ds.data[field].columns
        order = {int(u): k for k, u in enumerate(ids)}
        sel = [order[int(c)] for c in cols]
        frame = pd.DataFrame(rates[:, sel], index=index)
        frame.columns = pd.MultiIndex.from_product([[field], cols],
                                                   names=("signal_type", "channel"))
        frames.append(frame)
    ds.data = pd.concat(frames, axis=1)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m nlb_ndt.synthetic --out DIR [--like NAME] [--seed S]`."""
    parser = make_parser("Write a synthetic NLB dataset (NWB files in the DANDI layout of a "
                         "real one, plus ground truth) under DIR.")
    parser.add_argument("--out", required=True, help="root folder (used as NLB_DATA_RAW)")
    parser.add_argument("--like", default="mc_maze_small", choices=DATASET_NAMES,
                        help="real dataset whose layout, sizes and task to imitate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--trials", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="trial counts instead of the real dataset's")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a synthetic set made with other arguments")

    def body(args) -> int:
        if not args.debug:  # nlb_tools logs every alignment at INFO: dozens of lines
            logging.getLogger("nlb_tools").setLevel(logging.WARNING)
        folder = generate(args.out, like=args.like, seed=args.seed, trials=args.trials,
                          overwrite=args.overwrite)
        logger.info("synthetic %s ready: %s (set NLB_DATA_RAW=%s)", args.like, folder,
                    Path(args.out).expanduser().resolve())
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    # Run the package's copy of this module, so logs and errors carry its real name.
    from nlb_ndt.data.synthetic import main as _main

    sys.exit(_main())
