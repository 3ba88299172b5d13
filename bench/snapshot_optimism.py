"""How optimistic is a snapshot's val co-bps? Val against test co-bps per snapshot kind.

The cobps snapshot is the epoch with the best val co-bps, and the ranking then scores it on
the same val trials, so its val score carries a selection bonus that the lve snapshot
(chosen on the masked loss) does not. This scores every ranked snapshot of the demo's
search on the test split too, and prints, per kind, the mean val and test co-bps and the
mean of (val - test).

    python bench/snapshot_optimism.py [--home demo_output] [--name synthetic]

Reads the demo's models.csv (run `make demo` first). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(ROOT / "demo_output"),
                        help="the demo's NLB_HOME (default: ./demo_output)")
    parser.add_argument("--name", default="synthetic", help="the run name")
    args = parser.parse_args(argv)
    from nlb_ndt.paths import PATH_VARIABLES

    for var in PATH_VARIABLES:
        os.environ.pop(var, None)
    os.environ["NLB_HOME"] = str(Path(args.home).resolve())

    from threadpoolctl import threadpool_limits

    from nlb_ndt.config.layout import run_settings
    from nlb_ndt.data import preprocess
    from nlb_ndt.model.inference import snapshot_rates
    from nlb_ndt.paths import get_paths
    from nlb_ndt.scoring.evaluation import score_submission
    from nlb_ndt.stages.rank import read_ranking

    paths = get_paths()
    settings = run_settings(args.name, paths=paths)
    ranking = read_ranking(paths.submissions_dir / args.name / "models.csv")
    if "same_weights_as" in ranking:
        ranking = ranking[ranking["same_weights_as"] == ""]
    tensors = preprocess.load_tensors(settings.dataset, phase="test", bin_ms=settings.bin_ms,
                                      paths=paths)
    out: dict[str, dict] = {}
    with threadpool_limits(limits=1):
        for row in ranking.to_dict("records"):
            rates, _ = snapshot_rates(row["path"], train_heldin=tensors["train_spikes_heldin"],
                                      eval_heldin=tensors["eval_spikes_heldin"])
            (scores,) = score_submission(str(paths.eval_data_test), {settings.group: rates},
                                         groups=[settings.group])
            kind = out.setdefault(row["val_ckpt"], {"val": [], "test": []})
            kind["val"].append(float(row["co-bps"]))
            kind["test"].append(float(scores["co-bps"]))
    summary = {"home": os.environ["NLB_HOME"], "name": args.name, "kinds": {}}
    for kind, values in out.items():
        val, test = np.array(values["val"]), np.array(values["test"])
        summary["kinds"][kind] = {
            "snapshots": int(val.size), "mean_val_cobps": round(float(val.mean()), 4),
            "mean_test_cobps": round(float(test.mean()), 4),
            "mean_val_minus_test": round(float((val - test).mean()), 4),
            "best_val_cobps": round(float(val.max()), 4),
            "test_of_best_val": round(float(test[val.argmax()]), 4)}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
