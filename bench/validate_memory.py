"""Peak memory of `validate_test_submission.py mc_maze ...` on mc_maze-shaped synthetic data.

The original asked for 32 GB of RAM to validate mc_maze; the goal here is 16 GB. This
builds, in a temporary NLB_HOME:

- test-phase tensors of mc_maze's shape (2295 train+val trials, 574 test trials,
  137 held-in + 45 held-out neurons, 140 + 40 bins at 5 ms; Poisson counts) in
  preprocess' cache file, with placeholder NWB files so the cache counts as current
  (the cost of building tensors from the real NWB files is preprocess', not measured);
- AESMTE3's mc_maze ensemble (8 members) as checkpoints in the original's .pth format at
  the real model size (d = 182, 4 layers, 2 heads, FF 128, T = 180, learned positions),
  random weights, plus models.csv;
- a submission computed from them (in this process, not measured);

then runs the real script in a child process and reports the child's peak resident set
size (ru_maxrss), wall time and exit code, next to the same for a child that only imports
what the script imports. Prints one JSON object.

    python bench/validate_memory.py [--keep DIR [--reuse]] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nlb_ndt.config.defaults import ADDED_KEYS, get_cfg_defaults
from nlb_ndt.datasets import get_spec
from nlb_ndt.model.factory import build_model
from nlb_ndt.paths import get_paths

ROOT = Path(__file__).resolve().parents[1]
DATASET = "mc_maze"


def write_tensors(paths, spec, seed: int = 0) -> dict:
    """mc_maze-shaped test-phase tensors where preprocess.load_tensors will find them."""
    from nlb_ndt.data import preprocess
    from nlb_ndt.testing import poisson_tensors

    for name in (spec.train_file, spec.test_file):  # placeholders: the cache key's sources
        (paths.data_raw / spec.dandiset_id / name).parent.mkdir(parents=True, exist_ok=True)
        (paths.data_raw / spec.dandiset_id / name).write_bytes(b"placeholder")
    tensors = poisson_tensors(spec, 5, phase="test", rate=0.15, seed=seed)
    tensors = {k: v for k, v in tensors.items()
               if k.startswith("train") or k == "eval_spikes_heldin"}
    preprocess.store_tensors(DATASET, tensors, phase="test", paths=paths)
    return tensors


def ae_config():
    """The original's config keys with AESMTE3's mc_maze model settings."""
    cfg = get_cfg_defaults()
    m = cfg.MODEL
    m.NUM_LAYERS, m.HIDDEN_SIZE, m.EMBED_DIM, m.NUM_HEADS = 4, 128, 0, 2
    m.LEARNABLE_POSITION, m.PRE_NORM, m.FIXUP_INIT, m.TRIAL_LENGTH = True, True, True, 0
    m.CONTEXT_FORWARD, m.CONTEXT_BACKWARD = 50, 50
    for key in ADDED_KEYS:  # a released config does not have the keys we added
        node, leaf = key.rsplit(".", 1)
        del cfg[node][leaf]
    cfg.LOG_DIR = "/home/ubuntu/ray_results/logs"  # a training-machine path, as released
    cfg.freeze()
    return cfg


def write_release(root: Path, spec, n_models: int, max_spikes: int) -> None:
    """<root>/mc_maze/models.csv and <trial_id>.<lve|lfve>.pth in the original's format."""
    folder = root / DATASET
    folder.mkdir(parents=True)
    cfg = ae_config()
    full = get_cfg_defaults()
    full.merge_from_other_cfg(cfg)
    t_obs, t_fwd = spec.bins(5)
    rows = []
    for i in range(n_models):
        torch.manual_seed(i)
        model = build_model(full, num_neurons=spec.n_neurons, trial_length=t_obs + t_fwd,
                            max_spikes=max_spikes)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        trial_id, kind = f"{i:08x}", ("lve", "lfve")[i % 2]
        torch.save({"state_dict": model.state_dict(), "optim_state": opt.state_dict(),
                    "lr_scheduler": {}, "config": cfg,
                    "best_val": {"value": torch.tensor(0.3), "update": 100},
                    "best_unmasked_val": {"value": torch.tensor(0.3), "update": 100},
                    "best_r2": {"value": -100, "update": -1}, "max_spikes": max_spikes,
                    "num_neurons": spec.n_neurons, "trial_length": t_obs + t_fwd,
                    "extra_state": {"update": 100, "checkpoint": 1, "pth_time": 1.0,
                                    "max_spikes": max_spikes}},
                   folder / f"{trial_id}.{kind}.pth")
        rows.append({"trial_id": trial_id, "val_ckpt": kind, "co-bps": 0.35 - 0.001 * i})
    pd.DataFrame(rows).to_csv(folder / "models.csv")


# Runs a script as __main__ and, at exit, writes the process's peak resident set size.
# VmHWM is per address space and starts afresh at exec; getrusage's ru_maxrss would not do:
# it keeps the high-water mark of the (large) parent that forked the child.
_MEASURE = """
import atexit, re, runpy, sys
def _peak():
    with open('/proc/self/status') as f:
        kb = int(re.search(r'VmHWM:\\s+(\\d+) kB', f.read()).group(1))
    sys.stderr.write(f'\\nPEAK_RSS_KB {kb}\\n')
atexit.register(_peak)
script, sys.argv = sys.argv[1], sys.argv[1:]
if script == '-c':
    exec(sys.argv[1])
else:
    runpy.run_path(script, run_name='__main__')
"""


def child(args: list[str], env: dict) -> dict:
    """Run a script (or `-c CODE`) in a fresh interpreter; exit code, wall time, peak RSS."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    found = re.findall(r"PEAK_RSS_KB (\d+)", proc.stderr)
    peak_mb = int(found[-1]) / 1024 if found else float("nan")
    return {"exit_code": proc.returncode, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak_mb, 1), "stdout": proc.stdout[-2000:],
            "stderr": proc.stderr[-2000:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="build in DIR and keep it (default: a temp dir)")
    parser.add_argument("--device", default="cpu", help="where the validator runs models")
    parser.add_argument("--reuse", action="store_true",
                        help="with --keep: reuse the tensors, checkpoints and submission "
                             "an earlier run left there")
    args = parser.parse_args(argv)
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR")

    from nlb_ndt.paths import PATH_VARIABLES
    from nlb_ndt.scoring.ensemble import ensemble_rates
    from nlb_ndt.scoring.evalai_file import build_submission, write_submission
    from nlb_ndt.stages.validate_release import released_members

    spec = get_spec(DATASET)
    with tempfile.TemporaryDirectory(prefix="nlb_validate_bench_") as tmp:
        home = args.keep or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in PATH_VARIABLES}
        env["NLB_HOME"] = str(home)
        paths = get_paths(env)
        sub = home / "submission.h5"
        make_s = None
        if not (args.reuse and sub.is_file()):
            tensors = write_tensors(paths, spec)
            max_spikes = int(tensors["train_spikes_heldin"].max()) + 3
            write_release(paths.submission_validation_root, spec, spec.ensemble_size,
                          max_spikes)
            members = released_members(DATASET, paths.submission_validation_root)
            t0 = time.perf_counter()
            rates = ensemble_rates(members, train_heldin=tensors["train_spikes_heldin"],
                                   eval_heldin=tensors["eval_spikes_heldin"])
            write_submission(build_submission({spec.group(5): rates}), sub, overwrite=True)
            make_s = round(time.perf_counter() - t0, 1)
            del rates, tensors

        baseline = child(["-c", "import nlb_ndt.scoring.evaluation, "
                          "nlb_ndt.stages.validate_release, nlb_ndt.model.checkpoint, "
                          "nlb_ndt.model.inference, nlb_ndt.data.preprocess, torch, pandas, "
                          "h5py"], env)
        run = child([str(ROOT / "validate_test_submission.py"), DATASET, str(sub),
                     "--device", args.device], env)
    arrays = {"train": (spec.n_train + spec.n_val, 140, spec.n_neurons),
              "eval": (spec.n_test, 180, spec.n_neurons)}
    one_member_mb = sum(np.prod(s) for s in arrays.values()) * 4 / 2**20
    print(json.dumps({
        "bench": "validate_memory", "dataset_shape": DATASET, "members": spec.ensemble_size,
        "model": {"d_model": spec.n_neurons, "layers": 4, "heads": 2, "ff": 128,
                  "trial_length": 180},
        "device": args.device, "torch_threads": torch.get_num_threads(),
        "validation": {k: run[k] for k in ("exit_code", "wall_s", "peak_rss_mb")},
        "import_only_peak_rss_mb": baseline["peak_rss_mb"],
        "one_member_rates_mb": round(one_member_mb, 1),
        "make_submission_s": make_s,
        "validator_stdout_tail": run["stdout"].strip().splitlines()[-1:] or run["stderr"][-300:],
    }, indent=2))
    return 0 if run["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
