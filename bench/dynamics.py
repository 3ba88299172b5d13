"""Training dynamics of one fixed config over seeds, for an A/B of ndt.py; prints JSON.

    cp src/nlb_ndt/model/ndt.py /tmp/ndt_before.py          # before a change
    python bench/dynamics.py --ndt /tmp/ndt_before.py > before.json
    python bench/dynamics.py > after.json                    # the installed ndt.py
    python bench/dynamics.py --compare before.json after.json

A change that draws dropout masks differently (another random stream) cannot reproduce a
run bit for bit; what must hold is that training behaves the same in distribution. This
trains the synthetic template (nlb_ndt/config/templates/synthetic.yaml, with MODEL.DROPOUT
0.25 so that dropout matters and both mask resolutions run: 0.25 draws 8-bit masks, the
template's 0.05 for rates and embedding 16-bit ones) on the synthetic dataset, once per
seed, and reports each run's best val co-bps, best masked loss and last training loss.
`--compare` prints the means, spreads and the difference of the means in units of its
standard error. The data are generated into a temporary NLB_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import swap_ndt  # noqa: E402

#: The fixed config: the synthetic template with dropout raised inside its search range.
OPTS = ["MODEL.DROPOUT", 0.25]
DATASET = "mc_maze_small"


def train_seed(seed: int, home: Path, ndt: str | None, opts: list) -> dict:
    from nlb_ndt.config.defaults import load_config
    from nlb_ndt.config.render import TEMPLATE_DIR
    from nlb_ndt.training.run import train_model

    cfg = load_config(TEMPLATE_DIR / "synthetic.yaml", OPTS + opts + ["SEED", seed])
    started = time.perf_counter()
    with swap_ndt(ndt):
        final = train_model(cfg, run_dir=home / "runs" / f"seed{seed}", device="cpu",
                            resume=False)
    return {"seed": seed, "best_val_cobps": final["best_val_cobps"],
            "best_masked_loss": final["best_masked_loss"],
            "last_train_loss": final["train_loss"], "epochs": final["epoch"],
            "seconds": round(time.perf_counter() - started, 1)}


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("best_val_cobps", "best_masked_loss", "last_train_loss"):
        values = [r[key] for r in runs]
        out[key] = {"mean": statistics.mean(values), "sd": statistics.stdev(values),
                    "min": min(values), "max": max(values)}
    return out


def compare(before: dict, after: dict) -> dict:
    """Difference of the means per metric, in standard errors (Welch)."""
    result = {}
    for key in ("best_val_cobps", "best_masked_loss", "last_train_loss"):
        a = [r[key] for r in before["runs"]]
        b = [r[key] for r in after["runs"]]
        se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
        diff = statistics.mean(b) - statistics.mean(a)
        result[key] = {"before": statistics.mean(a), "after": statistics.mean(b),
                       "difference": diff, "difference_in_se": diff / se if se else 0.0,
                       "sd_before": statistics.stdev(a), "sd_after": statistics.stdev(b)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ndt", default=None, help="train with this copy of ndt.py")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opts", nargs="*", default=[], help="more config KEY VALUE pairs")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                        help="compare two earlier outputs instead of training")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        print(json.dumps(compare(before, after), indent=1))
        return 0
    torch.set_num_threads(args.threads)
    from nlb_ndt.data.synthetic import generate
    from nlb_ndt.paths import PATH_VARIABLES

    for var in PATH_VARIABLES:  # only the temporary NLB_HOME: never a user's folders
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        generate(home / "raw", like=DATASET, seed=0)
        os.environ["NLB_HOME"] = str(home)
        runs = [train_seed(seed, home, args.ndt, args.opts) for seed in args.seeds]
    print(json.dumps({"ndt_file": args.ndt or "installed", "opts": OPTS + args.opts,
                      "threads": args.threads, "runs": runs, "summary": summary(runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
