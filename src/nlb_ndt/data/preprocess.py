"""NWB files -> nlb_tools tensors -> cached h5 files in NDT_CACHE_DIR.

One file per dataset, bin size and phase (group = "mc_maze" at 5 ms, "mc_maze_20" at 20):

- `<group>_train.h5` (phase "val": fit on train trials, score on val trials):
  train_spikes_{heldin,heldout}[_forward] from the train split and
  eval_spikes_{heldin,heldout}[_forward] from the val split.
- `<group>_test.h5` (phase "test": fit on train+val, predict the test trials):
  the four train_* arrays from train+val and eval_spikes_heldin from the test split.
- `<group>_val_target.h5`: nlb_tools' make_eval_target_tensors(train='train', eval='val',
  include_psth=True), i.e. {group: {...}} as nlb_tools.evaluation.evaluate takes it (the
  PSTH entries come from `nlb_ndt.data.psth`, equal to nlb_tools' in far less memory).

Shapes are (trials, bins, neurons). Arrays are float32 counts; NaNs that nlb_tools puts
in (DMFC's set->go targets, bins outside observation intervals) stay NaN, so consumers
must mask them rather than cast them to integers. Every file records what it was built
from (NWB names, sizes, mtimes), the bin size, phase, nlb_tools version and a format
version; it is reused while those match and rebuilt otherwise. Files are written under a
temporary name and renamed, so a reader never sees a half-written cache.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from nlb_ndt.atomic import atomic_write
from nlb_ndt.data.psth import add_psth
from nlb_ndt.datasets import (
    BEHAVIOR_FIELDS,
    PHASES,
    DatasetSpec,
    check_bin_ms,
    check_phase,
    get_spec,
)
from nlb_ndt.paths import Paths, get_paths

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRAIN_KEYS = ("train_spikes_heldin", "train_spikes_heldout",
              "train_spikes_heldin_forward", "train_spikes_heldout_forward")
VAL_EVAL_KEYS = ("eval_spikes_heldin", "eval_spikes_heldout",
                 "eval_spikes_heldin_forward", "eval_spikes_heldout_forward")
TEST_EVAL_KEYS = ("eval_spikes_heldin",)

def tensor_path(dataset: str, *, phase: str, bin_ms: int = 5,
                paths: Paths | None = None) -> Path:
    """Cache file of the tensors of `dataset` for `phase` ("val" or "test")."""
    spec = get_spec(dataset)
    check_phase(phase)
    paths = paths or get_paths()
    suffix = "train" if phase == "val" else "test"
    return paths.ndt_cache_dir / f"{spec.group(bin_ms)}_{suffix}.h5"


def target_path(dataset: str, *, bin_ms: int = 5, paths: Paths | None = None) -> Path:
    """Cache file of the val-phase evaluation targets of `dataset`."""
    spec = get_spec(dataset)
    paths = paths or get_paths()
    return paths.ndt_cache_dir / f"{spec.group(bin_ms)}_val_target.h5"


def build_tensors(dataset: str, *, phase: str, bin_ms: int = 5, overwrite: bool = False,
                  paths: Paths | None = None) -> Path:
    """Make (or reuse) the cached tensors of one phase; the val phase also makes targets.

    Args:
        dataset: NLB dataset name.
        phase: "val" or "test".
        bin_ms: 5 or 20.
        overwrite: rebuild even when the cache matches its sources.
        paths: resolved directories (default: from the environment).

    Returns:
        The tensor file (see `tensor_path`).

    Raises:
        FileNotFoundError: the dataset's NWB files are not under NLB_DATA_RAW.
    """
    return build_all(dataset, phases=(phase,), bins=(bin_ms,), overwrite=overwrite,
                     paths=paths)[0]


def build_all(dataset: str, *, phases: Iterable[str] = PHASES, bins: Iterable[int] = (5,),
              overwrite: bool = False, paths: Paths | None = None) -> list[Path]:
    """`build_tensors` for several phases and bin sizes, reading each NWB folder once per bin.

    Returns:
        The tensor files, in the order (bin, phase) of the arguments.
    """
    spec = get_spec(dataset)
    phases = tuple(phases)
    for phase in phases:
        check_phase(phase)
    paths = paths or get_paths()
    folder = paths.data_raw / spec.folder
    out: list[Path] = []
    for bin_ms in bins:
        check_bin_ms(bin_ms)
        loaded: list = []  # the NWBDataset of this bin, loaded on first need
        for phase in phases:
            out.append(_build_phase(spec, phase, bin_ms, folder, paths, overwrite, loaded))
    return out


def load_tensors(dataset: str, *, phase: str, bin_ms: int = 5,
                 paths: Paths | None = None) -> dict[str, np.ndarray]:
    """The cached tensors of `phase` (built first if needed): {key: float32 array}."""
    path = build_tensors(dataset, phase=phase, bin_ms=bin_ms, paths=paths)
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f.keys()}


def load_val_target(dataset: str, *, bin_ms: int = 5, paths: Paths | None = None) -> dict:
    """The val-phase targets (built first if needed): {group: {key: array}} for evaluate()."""
    from nlb_tools.make_tensors import h5_to_dict

    build_tensors(dataset, phase="val", bin_ms=bin_ms, paths=paths)
    with h5py.File(target_path(dataset, bin_ms=bin_ms, paths=paths), "r") as f:
        return h5_to_dict(f)


# --------------------------------------------------------------------------- building


def _build_phase(spec: DatasetSpec, phase: str, bin_ms: int, folder: Path, paths: Paths,
                 overwrite: bool, loaded: list) -> Path:
    key = _cache_key(spec, phase, bin_ms, folder)
    out = tensor_path(spec.name, phase=phase, bin_ms=bin_ms, paths=paths)
    target = target_path(spec.name, bin_ms=bin_ms, paths=paths) if phase == "val" else None
    stale = [p for p in (out, target)
             if p is not None and (overwrite or not _cache_matches(p, key))]
    if not stale:
        logger.info("using cached %s tensors %s (sources unchanged)", phase, out)
        return out
    if not loaded:
        loaded.append(_load_dataset(spec, folder, bin_ms))
    ds = loaded[0]
    tensors, targets = _make_tensors(ds, spec, phase, bin_ms)
    _check_shapes(spec, phase, bin_ms, tensors)
    paths.ndt_cache_dir.mkdir(parents=True, exist_ok=True)
    if out in stale:
        logger.info("writing %s-phase tensors of %s (%d ms) to %s",
                    phase, spec.name, bin_ms, out)
        _write_tensors(out, tensors, key)
    if target is not None and target in stale:
        logger.info("writing val-phase targets of %s (%d ms) to %s", spec.name, bin_ms, target)
        _write_targets(target, targets, key)
    return out


def _make_tensors(ds, spec: DatasetSpec, phase: str, bin_ms: int) -> tuple[dict, dict | None]:
    """nlb_tools' tensors for `phase`, keyed as in the cache files."""
    from nlb_tools.make_tensors import (
        make_eval_input_tensors,
        make_eval_target_tensors,
        make_train_input_tensors,
    )

    train_split = "train" if phase == "val" else ["train", "val"]
    tensors = dict(make_train_input_tensors(
        ds, spec.name, trial_split=train_split, include_forward_pred=True, save_file=False))
    tensors.update(make_eval_input_tensors(
        ds, spec.name, trial_split=phase, save_file=False))
    targets = None
    if phase == "val":
        # = include_psth=True, with the PSTHs made by nlb_ndt.data.psth in a fraction of the
        # memory (nlb_tools' own smooths the whole session at 1 ms in float64).
        targets = make_eval_target_tensors(
            ds, spec.name, train_trial_split="train", eval_trial_split="val",
            include_psth=False, save_file=False)
        group = add_psth(targets[spec.group(bin_ms)], ds, spec.name, train_split="train",
                         eval_split="val", skip_fields=list(BEHAVIOR_FIELDS))
        tensors["eval_spikes_heldin_forward"] = group["eval_spikes_heldin_forward"]
        tensors["eval_spikes_heldout_forward"] = group["eval_spikes_heldout_forward"]
    keys = TRAIN_KEYS + (VAL_EVAL_KEYS if phase == "val" else TEST_EVAL_KEYS)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise RuntimeError(f"nlb_tools returned no {missing} for {spec.name} ({phase} phase)")
    return {k: np.asarray(tensors[k], dtype=np.float32) for k in keys}, targets


def _load_dataset(spec: DatasetSpec, folder: Path, bin_ms: int):
    from nlb_tools.nwb_interface import NWBDataset

    skip = [f for f in BEHAVIOR_FIELDS if f != spec.behavior]
    logger.info("loading %s NWB files from %s and binning at %d ms", spec.name, folder, bin_ms)
    ds = NWBDataset(str(folder), skip_fields=skip)
    ds.resample(bin_ms)
    return ds


def _check_shapes(spec: DatasetSpec, phase: str, bin_ms: int, tensors: dict) -> None:
    """Warn where the files disagree with the dataset table (e.g. re-released data)."""
    t_obs, t_fwd = spec.bins(bin_ms)
    n_train = spec.n_train if phase == "val" else spec.n_train + spec.n_val
    n_eval = spec.n_val if phase == "val" else spec.n_test
    expected = {"train_spikes_heldin": (n_train, t_obs, spec.n_heldin),
                "train_spikes_heldout_forward": (n_train, t_fwd, spec.n_heldout),
                "eval_spikes_heldin": (n_eval, t_obs, spec.n_heldin)}
    for key, shape in expected.items():
        got = tensors[key].shape
        if got[1:] != shape[1:]:
            logger.warning("%s %s has shape %s; the dataset table expects %s",
                           spec.name, key, got, shape)
        elif got[0] != shape[0]:
            logger.info("%s %s has %d trials (the real dataset has %d)",
                        spec.name, key, got[0], shape[0])


# --------------------------------------------------------------------------- cache files


def _source_files(spec: DatasetSpec, folder: Path) -> list[Path]:
    fix = (f"run `python download_data.py --datasets {spec.name}`, or set NLB_DATA_RAW to "
           f"the folder that holds {spec.dandiset_id}/")
    if not folder.is_dir():
        raise FileNotFoundError(f"no NWB folder for {spec.name} at {folder}; {fix}")
    files = sorted(folder.glob("*.nwb"))  # what NWBDataset(folder) loads
    names = {p.name for p in files}
    missing = [Path(f).name for f in (spec.train_file, spec.test_file)
               if Path(f).name not in names]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(missing)} for {spec.name} in {folder}; {fix}")
    return files


def _cache_key(spec: DatasetSpec, phase: str, bin_ms: int, folder: Path) -> str:
    """What a cache file depends on, as canonical JSON (compared as a string)."""
    sources = [{"name": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
               for p in _source_files(spec, folder)]
    return json.dumps({
        "format_version": FORMAT_VERSION, "dataset": spec.name, "phase": phase,
        "bin_ms": bin_ms, "nlb_tools": _nlb_tools_version(), "folder": str(folder),
        "sources": sources,
    }, sort_keys=True)


def _cache_matches(path: Path, key: str) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("cache_key") == key
    except OSError:  # unreadable (e.g. truncated by a crash elsewhere): rebuild
        return False


def _write_tensors(path: Path, tensors: dict[str, np.ndarray], key: str) -> None:
    meta = json.loads(key)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as f:
        for name, arr in tensors.items():
            # Light gzip: counts are mostly zeros; level 1 keeps loading fast.
            f.create_dataset(name, data=arr, dtype="float32", compression="gzip",
                             compression_opts=1, shuffle=True)
        _set_attrs(f, key, meta)


def _write_targets(path: Path, targets: dict, key: str) -> None:
    from nlb_tools.make_tensors import save_to_h5

    with atomic_write(path) as tmp:
        save_to_h5(targets, str(tmp), overwrite=True)
        with h5py.File(tmp, "a") as f:
            _set_attrs(f, key, json.loads(key))


def _set_attrs(f: h5py.File, key: str, meta: dict) -> None:
    f.attrs["cache_key"] = key
    for name in ("format_version", "dataset", "phase", "bin_ms", "nlb_tools"):
        f.attrs[name] = meta[name]
    f.attrs["sources"] = json.dumps(meta["sources"])


def _nlb_tools_version() -> str:
    try:
        return metadata.version("nlb-tools")
    except metadata.PackageNotFoundError:
        return "unknown"


def store_tensors(dataset: str, tensors: dict[str, np.ndarray], *, phase: str,
                  bin_ms: int = 5, paths: Paths | None = None) -> Path:
    """Write tensors made elsewhere (benchmarks, tests) as the cache of `dataset`.

    The cache key is that of the NWB files now under NLB_DATA_RAW, so `load_tensors`
    returns these arrays until those files change.
    """
    spec = get_spec(dataset)
    paths = paths or get_paths()
    path = tensor_path(dataset, phase=phase, bin_ms=bin_ms, paths=paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_tensors(path, tensors, _cache_key(spec, phase, bin_ms, paths.data_raw / spec.folder))
    return path
