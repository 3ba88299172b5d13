"""The files a synthetic simulation is written to: NWB files in DANDI's layout, the
ground-truth latents, and the test-split ground truth in nlb_tools' eval_data_test.h5
layout (see nlb_ndt.data.synthetic for the dataset as a whole)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from nlb_ndt.atomic import atomic_write
from nlb_ndt.data import synthetic_models as models
from nlb_ndt.data.psth import add_psth
from nlb_ndt.datasets import BEHAVIOR_FIELDS, DatasetSpec

logger = logging.getLogger(__name__)

_EPOCH = datetime(2021, 9, 1, tzinfo=timezone.utc)  # fixed dates keep files reproducible


def test_file_first(spec: DatasetSpec) -> bool:
    """NWBDataset loads a folder's files in sorted name order."""
    return Path(spec.test_file).name < Path(spec.train_file).name


# --------------------------------------------------------------------------- NWB files


def write_nwb(path: Path, spec: DatasetSpec, sim: models.Simulation, sess: models.Session,
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


def write_truth(path: Path, spec: DatasetSpec, sim: models.Simulation, meta: dict) -> None:
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


def read_truth(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        truth = {k: f[k][()] for k in ("readout_C", "readout_b", "unit_ids", "heldout")}
        truth["files"] = {
            f[role].attrs["file"]: {"latents": f[role]["latents"][()],
                                    "start_time_ms": f[role]["start_time_ms"][()],
                                    "end_ms": int(f[role].attrs["end_ms"])}
            for role in ("train", "test")
        }
    return truth


def write_eval_data_test(eval_path: Path, spec: DatasetSpec, sim: models.Simulation,
                          meta: dict) -> None:
    """Test-split targets for 5 and 20 ms, as nlb_tools' public eval_data_test.h5.

    Built as the benchmark's organisers built theirs: nlb_tools' make_eval_target_tensors
    on a full-information recording (every trial, held-out units and behaviour also in
    the test trials), here a private NWB file in a temporary folder outside the DANDI
    layout that holds both sessions on the timeline NWBDataset gives the public files.
    """
    from nlb_tools.make_tensors import make_eval_target_tensors, save_to_h5
    from nlb_tools.nwb_interface import NWBDataset


    first, second = (sim.test, sim.train) if test_file_first(spec) else (sim.train, sim.test)
    full_session = models.merge_sessions(first, second)
    targets: dict = {}
    with tempfile.TemporaryDirectory(prefix="nlb_ndt_private_") as tmp:
        path = Path(tmp) / "full_session.nwb"
        write_nwb(path, spec, sim, full_session, held_out=True, behavior=True,
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
