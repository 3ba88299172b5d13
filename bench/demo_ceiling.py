"""How much of the true rates' co-bps can any model reach from 75 training trials?

The demo's target is an ensemble at 0.7 x the true rates' val co-bps. This prints a
yardstick for that target on the demo's data: a ridge regression from held-in spike counts
(a window of +-K bins, plus a one-hot of the time bin) to the *true* log-rates of the
held-out neurons, fitted on the 75 training trials. It is given the true rates, which no
real model ever sees, so it is an optimistic reference and not a baseline.

    python bench/demo_ceiling.py [--home demo_output]

Reads the demo's synthetic dataset and cached 20 ms tensors; run `make demo` first.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASET, BIN_MS = "mc_maze_small", 20


def window_features(heldin: np.ndarray, k: int) -> np.ndarray:
    """(trials*bins, (2k+1)*N + bins): counts at t-k..t+k (zero-padded) and a time one-hot."""
    n, t, _ = heldin.shape
    padded = np.pad(heldin, ((0, 0), (k, k), (0, 0)))
    lagged = np.concatenate([padded[:, j:j + t] for j in range(2 * k + 1)], axis=2)
    time_onehot = np.broadcast_to(np.eye(t, dtype=heldin.dtype)[None], (n, t, t))
    return np.concatenate([lagged, time_onehot], axis=2).reshape(n * t, -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(ROOT / "demo_output"),
                        help="the demo's NLB_HOME (default: ./demo_output)")
    args = parser.parse_args(argv)
    for var in ("NLB_DATA_RAW", "NDT_CACHE_DIR"):
        os.environ.pop(var, None)
    os.environ["NLB_HOME"] = str(Path(args.home).resolve())

    from sklearn.linear_model import Ridge

    from nlb_ndt.data import preprocess
    from nlb_ndt.data.synthetic import true_rates
    from nlb_ndt.paths import get_paths
    from nlb_ndt.scoring.metrics import co_bps

    paths = get_paths()
    truth = true_rates(paths.data_raw, DATASET, phase="val", bin_ms=BIN_MS)
    tensors = preprocess.load_tensors(DATASET, phase="val", bin_ms=BIN_MS, paths=paths)
    group = f"{DATASET}_{BIN_MS}"
    target = preprocess.load_val_target(DATASET, bin_ms=BIN_MS, paths=paths)[group]
    heldout = target["eval_spikes_heldout"]
    n_eval, t_obs, n_out = heldout.shape

    result = {"true_rates": round(co_bps(truth["eval_rates_heldout"], heldout), 4),
              "oracle_label_ridge": {}}
    labels = np.log(truth["train_rates_heldout"]).reshape(-1, n_out)
    for k in (1, 2, 4):
        x_train = window_features(tensors["train_spikes_heldin"], k)
        x_eval = window_features(tensors["eval_spikes_heldin"], k)
        for alpha in (10.0, 100.0, 1000.0):
            fit = Ridge(alpha=alpha).fit(x_train, labels)
            rates = np.exp(fit.predict(x_eval)).reshape(n_eval, t_obs, n_out)
            result["oracle_label_ridge"][f"k={k},alpha={alpha:g}"] = round(
                co_bps(rates, heldout), 4)
    best = max(result["oracle_label_ridge"].values())
    result["best_oracle_label_ridge"] = best
    result["target_0.7x_truth"] = round(0.7 * result["true_rates"], 4)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
