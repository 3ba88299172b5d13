"""The AESMTE3 validator: recompute the released ensemble's test-phase rates and compare.

The released archive (Zenodo record 5875246) holds, per dataset, a models.csv ranking and
the snapshots `<trial_id>.<lve|lfve>.pth`. AESMTE3's ensemble for a dataset is the top N
rows by val co-bps (N from the dataset table, with its one trial swap for dmfc_rsg). The
members run one at a time on the test-phase tensors into a running mean, so the memory is
that of one member's rates, and the six arrays are compared with a relative tolerance.

Multiplicity follows the project's one rule (scoring.ensemble.member_counts): a snapshot
listed twice among the top N (e.g. a swap onto a trial that is also ranked) counts twice,
as it did in the original's mean over its list of members.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from nlb_ndt.data import preprocess
from nlb_ndt.datasets import AESMTE3_TRIAL_SWAPS, RATE_KEYS, get_spec
from nlb_ndt.paths import get_paths
from nlb_ndt.runtime import resolve_device
from nlb_ndt.scoring.ensemble import ensemble_rates, member_counts
from nlb_ndt.scoring.evalai_file import check_submission, group_shapes, read_h5, trial_counts
from nlb_ndt.scoring.evaluation import ArrayDiff, compare_outputs
from nlb_ndt.stages.rank import read_ranking


@dataclass
class ValidationResult:
    """Outcome of `validate_released_submission`.

    Attributes:
        dataset: the dataset validated.
        group: the submission group compared.
        members: the checkpoint files averaged, in ranking order, a repeat listed again.
        diffs: one ArrayDiff per array.
        ok: every array matched.
        counts: each distinct file's multiplicity, in order of first appearance.
    """

    dataset: str
    group: str
    members: list[Path]
    diffs: list[ArrayDiff]

    @property
    def ok(self) -> bool:
        """Every array matched."""
        return bool(self.diffs) and all(d.ok for d in self.diffs)

    @property
    def counts(self) -> dict[Path, int]:
        """Each distinct member's multiplicity, in order of first appearance."""
        return member_counts(self.members)


def released_members(dataset: str, root: str | Path, *, size: int | None = None,
                     swaps: Mapping[str, str] | None = None) -> list[Path]:
    """The checkpoint files of the released AESMTE3 ensemble of `dataset`, one per member.

    `<root>/<dataset>/models.csv` (first column the index) sorted by val co-bps, best
    first; the top N (default: AESMTE3's size for the dataset); AESMTE3's trial swaps
    (default: datasets.AESMTE3_TRIAL_SWAPS, which replace a trial id and keep the
    snapshot kind of its row); files `<trial_id>.<val_ckpt>.pth` beside models.csv. A file
    that two members name is listed twice (and so counts twice in `ensemble_rates`).

    Raises:
        FileNotFoundError: models.csv or a member's file is missing.
        ValueError: models.csv lacks a column or has fewer than N rows.
    """
    spec = get_spec(dataset)
    folder = Path(root) / dataset
    csv = folder / "models.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"no released checkpoints at {folder} (models.csv missing); "
                                f"run `python download_checkpoints.py`")
    size = spec.ensemble_size if size is None else int(size)
    swaps = AESMTE3_TRIAL_SWAPS.get(dataset, {}) if swaps is None else swaps
    top = read_ranking(csv).head(size)
    if len(top) < size:
        raise ValueError(f"{csv} lists {len(top)} snapshots; the AESMTE3 {dataset} "
                         f"ensemble has {size}")
    members = []
    for row in top.to_dict("records"):
        trial = swaps.get(row["trial_id"], row["trial_id"])
        path = folder / f"{trial}.{row['val_ckpt']}.pth"
        if not path.is_file():
            raise FileNotFoundError(f"ensemble member {path.name} is missing from {folder}; "
                                    f"run `python download_checkpoints.py`")
        members.append(path)
    return members


def validate_released_submission(dataset: str, submission_h5: str | Path, *, paths=None,
                                 device: str | None = "cpu", rtol: float = 1e-5,
                                 tensors: Mapping[str, np.ndarray] | None = None
                                 ) -> ValidationResult:
    """Recompute AESMTE3's test-phase rates for `dataset` and compare them to a submission.

    The released checkpoints (SUBMISSION_VALIDATION_ROOT/<dataset>/) are run one at a time
    on the test-phase tensors and averaged; the six arrays of the file's `<dataset>` group
    are compared with numpy's assert_allclose rule (rtol, atol 0).

    Args:
        dataset: NLB dataset name (5 ms group, as AESMTE3).
        submission_h5: the submission file to check.
        paths: resolved paths (default: from the environment).
        device: where models run.
        rtol: relative tolerance (a finite number >= 0).
        tensors: test-phase tensors (default: preprocess.load_tensors(dataset, "test")).

    Every argument (dataset, rtol, device, the file) is checked before any checkpoint or
    tensor is read.
    """
    paths = paths or get_paths()
    spec = get_spec(dataset)
    group = spec.group(5)
    if not 0 <= float(rtol) < float("inf"):
        raise ValueError(f"rtol must be a finite number >= 0, not {rtol!r}")
    device = resolve_device(device)
    submission_h5 = Path(submission_h5)
    if not submission_h5.is_file():
        raise FileNotFoundError(f"submission file {submission_h5} does not exist")
    if not h5py.is_hdf5(submission_h5):
        raise ValueError(f"submission file {submission_h5} is not an HDF5 file (expected "
                         f"EvalAI's submission layout)")
    members = released_members(dataset, paths.submission_validation_root)
    if tensors is None:
        tensors = preprocess.load_tensors(dataset, phase="test", bin_ms=5, paths=paths)
    # Keep only what inference needs; the other test-phase arrays are dropped here.
    train_heldin, eval_heldin = tensors["train_spikes_heldin"], tensors["eval_spikes_heldin"]
    expected = {group: group_shapes(dataset, **trial_counts(tensors))}
    del tensors
    submitted = read_h5(submission_h5, groups=[group])
    check_submission(submitted, expected, where=str(submission_h5))
    submitted = {key: submitted[group][key] for key in RATE_KEYS}
    recomputed = ensemble_rates(members, train_heldin=train_heldin, eval_heldin=eval_heldin,
                                device=device)
    diffs = compare_outputs(recomputed, submitted, rtol=rtol)
    return ValidationResult(dataset, group, members,
                            [replace(d, name=f"{group}/{d.name}") for d in diffs])
