"""One training run outside a search: `train.py`, and the refits of `make_submission --refit`.

A single run has the folder layout of a search trial, so the ranking, the plots and the
loaders read it the same way; the config comes from a file or a run name, and the run
continues from its state.pt when started again.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from nlb_ndt.config.defaults import (
    apply_overrides,
    check_opts,
    load_config,
    warn_inert_settings,
)
from nlb_ndt.config.layout import FINAL_KIND, SNAPSHOT_DIR, SNAPSHOT_KINDS, snapshot_path
from nlb_ndt.config.typed import train_config
from nlb_ndt.paths import Paths, get_paths
from nlb_ndt.training.run import train_model

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a single run left: its folder, its last metrics and its snapshot files."""

    run_dir: Path
    trial_id: str
    metrics: dict
    snapshots: dict[str, Path]

    @property
    def stopped(self) -> str | None:
        """Why the run stopped before its end (a signal, a deadline), or None."""
        return self.metrics.get("stopped")

    def format_report(self) -> str:
        m = self.metrics

        def num(key: str) -> str:
            value = m.get(key)
            return "-" if value is None or not math.isfinite(float(value)) else f"{value:.4f}"

        lines = [f"{self.run_dir}: epoch {m.get('epoch')}, train loss {num('train_loss')}, "
                 f"best masked val loss {num('best_masked_loss')}, "
                 f"best val co-bps {num('best_val_cobps')}"]
        lines += [f"  {kind:<6} {path}" for kind, path in self.snapshots.items()]
        if self.stopped:
            lines.append(f"stopped before the end ({self.stopped}); the state is saved: run "
                         f"the same command again to continue")
        return "\n".join(lines)


def resolve_config_path(config: str | Path, paths: Paths) -> Path:
    """A YAML path as given, or $CONFIG_DIR/<name>.yaml for a run name."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        return path
    named = paths.config_dir / f"{config}.yaml"
    if not named.is_file():
        raise FileNotFoundError(f"no config {named} for run {config!r}; run "
                                f"`python generate_all_configs.py` or give a YAML file")
    return named


def train_one(config: str | Path, *, opts: Sequence[str] = (), out: str | Path | None = None,
              seed: int | None = None, device: str | None = None, resume: bool = True,
              trial_id: str | None = None, paths: Paths | None = None,
              progress: bool = True) -> RunResult:
    """Train one NDT from a config file or run name; see the module docstring.

    Args:
        config: a YAML file or a run name.
        opts: config overrides ["KEY", "VALUE", ...].
        out: the run folder (default $CHECKPOINT_DIR/<config name>-s<seed>).
        seed: replaces the config's SEED.
        device: replaces SYSTEM.DEVICE ("auto", "cpu", "cuda", "cuda:1").
        resume: continue from the folder's state.pt (False starts again).
        trial_id: names the snapshots <trial_id>.<kind>.pth (default: the folder's name).
        paths: resolved paths (default: from the environment).
        progress: a progress bar over epochs on a terminal.
    """
    opts = check_opts(opts)
    paths = paths or get_paths()
    cfg_path = resolve_config_path(config, paths)
    cfg = load_config(cfg_path, opts, freeze=False)
    overrides = {"CHECKPOINT_DIR": f"{SNAPSHOT_DIR}/"}  # snapshots live in the run folder
    if seed is not None:
        overrides["SEED"] = int(seed)
    if device is not None:
        overrides["SYSTEM.DEVICE"] = device
    cfg = apply_overrides(cfg, overrides)
    cfg.freeze()
    warn_inert_settings(cfg, ndt_cache_dir=paths.ndt_cache_dir)
    name = cfg_path.stem if cfg_path.stem != "config" else cfg_path.parent.name
    run_dir = Path(out) if out is not None else paths.checkpoint_dir / f"{name}-s{cfg.SEED}"
    trial_id = trial_id or run_dir.name
    log.info("training %s (seed %d, %s) in %s", cfg_path, cfg.SEED, cfg.DATA.TRAIN_SPLITS,
             run_dir)
    with tqdm(total=train_config(cfg.TRAIN).stop_epoch, desc=trial_id, unit="epoch",
              disable=not (progress and sys.stderr.isatty())) as bar:
        def report(metrics: dict) -> None:
            bar.update(int(metrics["epoch"]) - bar.n)
            bar.set_postfix(loss=f"{metrics['train_loss']:.4f}",
                            cobps=f"{metrics['best_val_cobps']:.4f}")

        metrics = train_model(cfg, run_dir=run_dir, trial_id=trial_id, device=cfg.SYSTEM.DEVICE,
                              report=report, resume=resume)
    kinds = (*SNAPSHOT_KINDS, FINAL_KIND)
    snapshots = {kind: snapshot_path(run_dir, trial_id, kind) for kind in kinds}
    return RunResult(run_dir, trial_id, metrics,
                     {k: p for k, p in snapshots.items() if p.is_file()})
