"""The one table of the seven NLB'21 datasets. No other module keeps its own list.

Facts from the NLB'21 paper and nlb_tools (shapes, splits), the DANDI records (versions,
sizes, digests) and the AESMTE3 release (ensemble sizes, the dmfc_rsg trial swap).
Bins and trial counts are for 5 ms bins; `bins(bin_ms)` converts. DMFC_RSG's unit counts
are those of the regenerated DANDI file (40 held-in / 14 held-out); its trial counts come
from the pre-regeneration tutorial table and should be re-checked against the files.
"""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_BIN_MS = (5, 20)
#: Marks a dandiset folder as written by nlb_ndt.synthetic (downloads never mix into it).
SYNTHETIC_MARKER = "SYNTHETIC.json"
#: NLB's evaluation phases: val (held-out part of the train file) and test.
PHASES = ("val", "test")
#: The six rate arrays of a submission group, in nlb_tools' order (spikes per bin).
RATE_KEYS = (
    "train_rates_heldin",
    "train_rates_heldout",
    "eval_rates_heldin",
    "eval_rates_heldout",
    "eval_rates_heldin_forward",
    "eval_rates_heldout_forward",
)
#: Behaviour series of the NLB files. Only the one a dataset's targets decode is loaded;
#: the rest would cost memory at 1 ms (mc_maze) and nothing here uses them.
BEHAVIOR_FIELDS = ("hand_vel", "hand_pos", "cursor_pos", "eye_pos", "finger_vel",
                   "finger_pos", "target_pos", "force", "muscle_len", "muscle_vel",
                   "joint_ang", "joint_vel")


class UnknownDatasetError(ValueError):
    """A dataset name that is not one of the seven NLB datasets."""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline needs to know about one NLB dataset.

    Attributes:
        name: nlb_tools' dataset name (also the submission group at 5 ms).
        dandiset_id: DANDI archive id, e.g. "000128".
        version: pinned published dandiset version.
        subject: subject folder inside the dandiset, e.g. "sub-Jenkins".
        train_file, test_file: asset paths relative to the dandiset folder.
        train_size, test_size: asset sizes in bytes where known (None otherwise).
        train_sha256, test_sha256: `dandi:sha2-256` digests where known.
        n_heldin, n_heldout: neuron counts.
        t_obs, t_fwd: observed and forward-prediction bins at 5 ms.
        n_train, n_val, n_test: trials in the NLB train / val / test splits.
        ensemble_size: N of the submitted AESMTE3 ensemble.
        kind: task family ("maze", "rtt", "area2", "dmfc"), used by the synthetic data.
        behavior: name of the decoded behaviour series (None for DMFC).
    """

    name: str
    dandiset_id: str
    version: str
    subject: str
    train_file: str
    test_file: str
    n_heldin: int
    n_heldout: int
    t_obs: int
    t_fwd: int
    n_train: int
    n_val: int
    n_test: int
    ensemble_size: int
    kind: str
    behavior: str | None
    train_size: int | None = None
    test_size: int | None = None
    train_sha256: str | None = None
    test_sha256: str | None = None

    @property
    def n_neurons(self) -> int:
        return self.n_heldin + self.n_heldout

    @property
    def is_scaling(self) -> bool:
        """The three MC_Maze scaling sets must share one submission file."""
        return self.name in SCALING_DATASETS

    def bins(self, bin_ms: int = 5) -> tuple[int, int]:
        """(T_obs, T_fwd) at `bin_ms` (5 or 20)."""
        check_bin_ms(bin_ms)
        factor = bin_ms // 5
        return self.t_obs // factor, self.t_fwd // factor

    def group(self, bin_ms: int = 5) -> str:
        """The submission / target h5 group: "mc_maze" at 5 ms, "mc_maze_20" at 20 ms."""
        check_bin_ms(bin_ms)
        return self.name if bin_ms == 5 else f"{self.name}_{bin_ms}"

    @property
    def folder(self) -> str:
        """Folder of the NWB files relative to NLB_DATA_RAW (the DANDI layout)."""
        return f"{self.dandiset_id}/{self.subject}"


def _maze(name: str, dandiset: str, version: str, ses: str, n_in: int, n_out: int,
          n_train: int, n_val: int, n_test: int, ensemble: int, **files) -> DatasetSpec:
    stem = f"sub-Jenkins/sub-Jenkins_ses-{ses}"
    return DatasetSpec(
        name=name, dandiset_id=dandiset, version=version, subject="sub-Jenkins",
        train_file=f"{stem}_desc-train_behavior+ecephys.nwb",
        test_file=f"{stem}_desc-test_ecephys.nwb",
        n_heldin=n_in, n_heldout=n_out, t_obs=140, t_fwd=40,
        n_train=n_train, n_val=n_val, n_test=n_test, ensemble_size=ensemble,
        kind="maze", behavior="hand_vel", **files,
    )


_SPECS = (
    _maze("mc_maze", "000128", "0.220113.0400", "full", 137, 45, 1721, 574, 574, 8,
          train_size=690_612_247, test_size=3_392_688),
    DatasetSpec(
        name="mc_rtt", dandiset_id="000129", version="0.241017.1444", subject="sub-Indy",
        train_file="sub-Indy/sub-Indy_desc-train_behavior+ecephys.nwb",
        test_file="sub-Indy/sub-Indy_desc-test_ecephys.nwb",
        n_heldin=98, n_heldout=32, t_obs=120, t_fwd=40,
        n_train=810, n_val=270, n_test=272, ensemble_size=13,
        kind="rtt", behavior="finger_vel",
        train_size=49_764_168, test_size=1_201_344,
    ),
    DatasetSpec(
        name="area2_bump", dandiset_id="000127", version="0.220113.0359", subject="sub-Han",
        train_file="sub-Han/sub-Han_desc-train_behavior+ecephys.nwb",
        test_file="sub-Han/sub-Han_desc-test_ecephys.nwb",
        n_heldin=49, n_heldout=16, t_obs=120, t_fwd=40,
        n_train=272, n_val=92, n_test=98, ensemble_size=21,
        kind="area2", behavior="hand_vel",
        train_size=1_822_876_234, test_size=492_576,
    ),
    DatasetSpec(
        name="dmfc_rsg", dandiset_id="000130", version="0.220113.0407", subject="sub-Haydn",
        # DMFC's train file has no "behavior" in its name.
        train_file="sub-Haydn/sub-Haydn_desc-train_ecephys.nwb",
        test_file="sub-Haydn/sub-Haydn_desc-test_ecephys.nwb",
        n_heldin=40, n_heldout=14, t_obs=300, t_fwd=40,
        n_train=741, n_val=248, n_test=252, ensemble_size=13,
        kind="dmfc", behavior=None,
    ),
    _maze("mc_maze_large", "000138", "0.220113.0407", "large", 122, 40, 375, 125, 100, 8,
          train_size=148_590_536, test_size=802_352,
          train_sha256="1188ddf5b822dd9ac49afb8916f4b42a85867613cf7f169d0b04a1d1aeecd700"),
    _maze("mc_maze_medium", "000139", "0.220113.0408", "medium", 114, 38, 188, 62, 100, 8,
          train_size=76_604_764, test_size=695_928,
          train_sha256="3852799f85f662f1cacadb0d758ba8fa0dc6cca318f46c9b131978adf1baffb6"),
    _maze("mc_maze_small", "000140", "0.220113.0408", "small", 107, 35, 75, 25, 100, 7,
          train_size=29_207_528, test_size=689_312),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
SCALING_DATASETS = ("mc_maze_large", "mc_maze_medium", "mc_maze_small")

#: AESMTE3's dmfc_rsg ensemble used trial 91fde75c in place of a6c8e99c
#: (its README says so); the validator reproduces that swap.
AESMTE3_TRIAL_SWAPS: dict[str, dict[str, str]] = {"dmfc_rsg": {"a6c8e99c": "91fde75c"}}


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset `name`; raises UnknownDatasetError listing the valid names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}"
        ) from None


def check_bin_ms(bin_ms: int) -> int:
    """Validate a bin size in ms (5 or 20, the two NLB tracks)."""
    if bin_ms not in SUPPORTED_BIN_MS:
        raise ValueError(f"bin size {bin_ms} ms is not an NLB track; use 5 or 20")
    return bin_ms


def check_phase(phase: str) -> str:
    """Validate an evaluation phase ("val" or "test")."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(PHASES)}, not {phase!r}")
    return phase


def parse_group(group: str) -> tuple[str, int]:
    """A submission group name -> (dataset, bin_ms): "mc_maze_20" -> ("mc_maze", 20)."""
    for bin_ms in SUPPORTED_BIN_MS:
        if bin_ms != 5 and group.endswith(f"_{bin_ms}"):
            return get_spec(group[: -len(f"_{bin_ms}")]).name, bin_ms
    return get_spec(group).name, 5
