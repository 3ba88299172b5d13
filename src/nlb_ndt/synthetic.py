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
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from . import _synth_models as models
from .atomic import atomic_write, write_text_atomic
from .cli import make_parser, run
from .datasets import (
    BEHAVIOR_FIELDS,
    DATASET_NAMES,
    SYNTHETIC_MARKER,
    DatasetSpec,
    check_bin_ms,
    check_phase,
    get_spec,
)
from .psth import add_psth

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MARKER = SYNTHETIC_MARKER
TRUTH = "synthetic_truth.h5"
EVAL_DATA_TEST = "eval_data_test.h5"
_EPOCH = datetime(2021, 9, 1, tzinfo=timezone.utc)  # fixed dates keep files reproducible


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
    marker = _read_marker(ds_dir)
    if marker is not None:
        same = {k: marker.get(k) for k in wanted} == wanted
        if same and marker.get("complete") and _outputs_exist(spec, out_dir):
            logger.info("synthetic %s (seed %d) already complete in %s; reusing it",
                        like, seed, ds_dir)
            return folder
        if not same and not overwrite:
            raise FileExistsError(
                f"{ds_dir} holds synthetic data made with like={marker.get('like')}, "
                f"seed={marker.get('seed')}, trials={marker.get('trials')}; pass "
                "overwrite=True (--overwrite) to replace it, or choose another --out")

    logger.info("generating synthetic %s (seed %d, trials %s) into %s",
                like, seed, counts, ds_dir)
    folder.mkdir(parents=True, exist_ok=True)
    # The marker goes first, so an interrupted run is still recognised as synthetic.
    _write_json(ds_dir / MARKER, {**wanted, "complete": False})

    sim = models.simulate(spec, seed=seed, counts=counts)
    train_path = ds_dir / spec.train_file
    test_path = ds_dir / spec.test_file
    _write_nwb(train_path, spec, sim, sim.train, held_out=True, behavior=True, role="train")
    _write_nwb(test_path, spec, sim, sim.test, held_out=False, behavior=False, role="test")
    _write_truth(ds_dir / TRUTH, spec, sim, wanted)
    _write_eval_data_test(eval_path, spec, sim, wanted)
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
    truth = _read_truth(truth_path)
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


# --------------------------------------------------------------------------- NWB files


def _write_nwb(path: Path, spec: DatasetSpec, sim: models.Simulation, sess: models.Session,
               *, held_out: bool, behavior: bool, role: str) -> None:
    """One NWB file of `sess`: all units if `held_out`, else held-in units only."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(
        session_description=f"SYNTHETIC {spec.name}-shaped {role} data (nlb_ndt.synthetic)",
        identifier=f"nlb_ndt-synthetic-{spec.name}-seed{sim.seed}-{role}",
        session_start_time=_EPOCH, file_create_date=_EPOCH,
        notes="Synthetic data: spikes are Poisson samples of known latent-driven rates.",
    )
    columns = sess.trial_columns()
    for name, (_, desc) in columns.items():
        nwb.add_trial_column(name=name, description=desc)
    starts, stops = sess.trials["start_time"] / 1000.0, sess.trials["stop_time"] / 1000.0
    for i in range(sess.n_trials):
        row = {name: _py(vals[i]) for name, (vals, _) in columns.items()}
        nwb.add_trial(start_time=float(starts[i]), stop_time=float(stops[i]), **row)

    keep = np.flatnonzero(np.ones(sim.n_units, bool) if held_out else ~sim.heldout)
    nwb.units = _units_table(sim, sess, keep)

    if behavior and sess.behavior is not None and spec.behavior is not None:
        module = nwb.create_processing_module(name="behavior", description="behaviour at 1 ms")
        module.add(TimeSeries(
            name=spec.behavior, data=sess.behavior, unit="mm/s",
            timestamps=np.arange(sess.end_ms) / 1000.0, comments="columns=[x,y]",
            description=f"synthetic {spec.behavior}, a lagged readout of the latents"))

    # The hidden temporary name keeps NWBDataset's glob("*.nwb") off a half-written file.
    with atomic_write(path, suffix=".nwb") as tmp, NWBHDF5IO(str(tmp), "w") as io:
        io.write(nwb)


def _units_table(sim: models.Simulation, sess: models.Session, keep: np.ndarray):
    """The units table, built column-wise (adding units one by one is ~100x slower)."""
    from hdmf.common import ElementIdentifiers, VectorData, VectorIndex
    from pynwb.misc import Units

    times = [sess.spike_times[j] for j in keep]
    spike_times = VectorData(name="spike_times", description="spike times (s)",
                             data=np.concatenate(times))
    spike_index = VectorIndex(name="spike_times_index", target=spike_times,
                              data=np.cumsum([len(t) for t in times]))
    intervals = VectorData(name="obs_intervals", description="observation intervals (s)",
                           data=np.tile([[0.0, sess.end_ms / 1000.0]], (len(keep), 1)))
    intervals_index = VectorIndex(name="obs_intervals_index", target=intervals,
                                  data=np.arange(1, len(keep) + 1))
    heldout = VectorData(name="heldout", data=sim.heldout[keep],
                         description="held-out unit (NLB co-smoothing target)")
    columns = [spike_times, spike_index, intervals, intervals_index, heldout]
    return Units(name="units", description="sorted units (synthetic)",
                 id=ElementIdentifiers(name="id", data=sim.unit_ids[keep].astype(np.int64)),
                 columns=columns, colnames=["spike_times", "obs_intervals", "heldout"])


def _py(value):
    """numpy scalar -> python scalar, for hdmf's column type checks."""
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- ground truth


def _write_truth(path: Path, spec: DatasetSpec, sim: models.Simulation, meta: dict) -> None:
    """Latents per file and the readout: rate(t) = exp(latents(t) @ C + b) spikes per ms."""
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["meta"] = json.dumps(meta)
        f.attrs["description"] = (
            "true rates of the synthetic NWB files: exp(latents @ readout_C + readout_b) "
            "spikes per ms on each file's 1 ms grid")
        f["readout_C"] = sim.C
        f["readout_b"] = sim.b
        f["unit_ids"] = sim.unit_ids
        f["heldout"] = sim.heldout
        for role, sess, fname in (("train", sim.train, spec.train_file),
                                  ("test", sim.test, spec.test_file)):
            g = f.create_group(role)
            g.attrs["file"] = Path(fname).name
            g.attrs["end_ms"] = sess.end_ms
            g.create_dataset("latents", data=sess.latents, compression="gzip",
                             compression_opts=1, shuffle=True)
            g["start_time_ms"] = sess.trials["start_time"]


def _read_truth(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        truth = {k: f[k][()] for k in ("readout_C", "readout_b", "unit_ids", "heldout")}
        truth["files"] = {
            f[role].attrs["file"]: {"latents": f[role]["latents"][()],
                                    "start_time_ms": f[role]["start_time_ms"][()],
                                    "end_ms": int(f[role].attrs["end_ms"])}
            for role in ("train", "test")
        }
    return truth


def _test_file_first(spec: DatasetSpec) -> bool:
    """NWBDataset loads a folder's files in sorted name order."""
    return Path(spec.test_file).name < Path(spec.train_file).name


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


def _write_eval_data_test(eval_path: Path, spec: DatasetSpec, sim: models.Simulation,
                          meta: dict) -> None:
    """Test-split targets for 5 and 20 ms, as nlb_tools' public eval_data_test.h5.

    Built as the benchmark's organisers built theirs: nlb_tools' make_eval_target_tensors
    on a full-information recording (every trial, held-out units and behaviour also in
    the test trials), here a private NWB file in a temporary folder outside the DANDI
    layout that holds both sessions on the timeline NWBDataset gives the public files.
    """
    from nlb_tools.make_tensors import make_eval_target_tensors, save_to_h5
    from nlb_tools.nwb_interface import NWBDataset


    first, second = (sim.test, sim.train) if _test_file_first(spec) else (sim.train, sim.test)
    full_session = models.merge_sessions(first, second)
    targets: dict = {}
    with tempfile.TemporaryDirectory(prefix="nlb_ndt_private_") as tmp:
        path = Path(tmp) / "full_session.nwb"
        _write_nwb(path, spec, sim, full_session, held_out=True, behavior=True,
                   role="full-private")
        del full_session
        for bin_ms in (5, 20):
            ds = NWBDataset(str(path))  # loaded per bin: resample changes it in place
            ds.resample(bin_ms)
            splits = {"train_trial_split": ["train", "val"], "eval_trial_split": "test"}
            target = make_eval_target_tensors(ds, spec.name, include_psth=False,
                                              save_file=False, **splits)
            group = spec.group(bin_ms)
            targets[group] = add_psth(target[group], ds, spec.name,
                                      train_split=splits["train_trial_split"],
                                      eval_split=splits["eval_trial_split"],
                                      skip_fields=list(BEHAVIOR_FIELDS))
            del ds

    with atomic_write(eval_path) as tmp_path:
        if eval_path.is_file():  # keep the groups of other synthetic datasets
            shutil.copy2(eval_path, tmp_path)
        save_to_h5(targets, str(tmp_path), overwrite=True)
        with h5py.File(tmp_path, "a") as f:
            f.attrs["synthetic"] = True
            f.attrs["description"] = "test-split ground truth of nlb_ndt.synthetic datasets"
            for group in targets:
                f[group].attrs["meta"] = json.dumps(meta)
    logger.info("wrote test-split ground truth %s to %s", sorted(targets), eval_path)


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
    from nlb_ndt.synthetic import main as _main

    sys.exit(_main())
