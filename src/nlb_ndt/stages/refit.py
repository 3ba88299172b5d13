"""Refits for the test phase: each chosen snapshot's trial retrained on train+val.

NLB's test phase allows training on the train and val trials together; AESMTE3 trained on
train only. A refit takes the member's own trial config (its config.yaml: hyperparameters
and seed), trains on train+val with the same seed and learning-rate schedule, and stops at
the epoch at which the member's snapshot was taken. There is no val split left to choose a
snapshot with, so the refit's result is its last epoch (`<trial id>.final.pth`).

Refits live next to the originals, in `<trial folder>/refit/<kind>-e<epoch>/`, and a
finished one is reused on a re-run. The val phase cannot be refitted: val is the data the
ensemble was chosen on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from nlb_ndt.config.layout import CONFIG_FILE, FINAL_KIND, REFIT_DIR, snapshot_path
from nlb_ndt.paths import Paths
from nlb_ndt.stages.train_one import train_one

log = logging.getLogger(__name__)

def refit_dir(member: Mapping) -> Path:
    """Where the refit of one ensemble member (an ensemble.json member) lives."""
    trial_dir = Path(member["path"]).parent.parent
    return trial_dir / REFIT_DIR / f"{member['val_ckpt']}-e{member['epoch']}"


def refit_member(member: Mapping, *, device: str | None = None, paths: Paths | None = None
                 ) -> Path:
    """Retrain one member's trial on train+val up to the member's epoch; the final model.

    Args:
        member: an ensemble.json member (path, trial_id, val_ckpt, epoch).
        device: where to train (default: the trial config's SYSTEM.DEVICE).
        paths: resolved paths.

    Returns:
        The refitted snapshot file (reused when it already exists).
    """
    if member.get("epoch") is None:
        raise ValueError(f"{member['path']}: the snapshot records no epoch, so it cannot be "
                         f"refitted (only this project's own snapshots can)")
    trial_dir = Path(member["path"]).parent.parent
    run_dir = refit_dir(member)
    final = snapshot_path(run_dir, member["trial_id"], FINAL_KIND)
    if final.is_file():
        log.info("reusing the refit of %s.%s: %s", member["trial_id"], member["val_ckpt"], final)
        return final
    log.info("refitting %s.%s on train+val for %d epochs in %s", member["trial_id"],
             member["val_ckpt"], member["epoch"], run_dir)
    train_one(trial_dir / CONFIG_FILE, out=run_dir, trial_id=member["trial_id"], device=device,
              opts=["DATA.TRAIN_SPLITS", "train+val", "TRAIN.STOP_AT_EPOCH",
                    str(int(member["epoch"]))], paths=paths, progress=True)
    if not final.is_file():
        raise RuntimeError(f"the refit of {member['path']} left no {final.name} in {run_dir}")
    return final


def refit_members(members: list[Mapping], *, device: str | None = None,
                  paths: Paths | None = None) -> dict[Path, int]:
    """{refitted snapshot: multiplicity} for an ensemble's members, one refit each."""
    out: dict[Path, int] = {}
    for member in members:
        path = refit_member(member, device=device, paths=paths)
        out[path] = out.get(path, 0) + int(member.get("count", 1))
    return out
