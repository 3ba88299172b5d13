"""What a search trial pays before it trains: fresh worker processes against reused ones.

Runs the synthetic smoke search (4 epochs per trial) with one trial at a time, twice: with
a new worker process per trial (`--no-reuse-actors`, how every trial started before) and
with workers reused. For each trial after the first it measures, from the trials' own
logs, the seconds from the end of the previous trial to the end of this trial's first
epoch (worker start, imports, data, model, one epoch), and the first epoch's own time.

    python bench/trial_startup.py [--trials 5] [--home /tmp/nlb_trial_startup]

Prints one JSON object; results are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _times(log: Path) -> tuple[float, float, float]:
    """(first line, first epoch done, last line) times of a trial.log, in seconds."""
    lines = [line for line in log.read_text().splitlines() if re.match(STAMP, line)]

    def at(line: str) -> float:
        stamp = re.match(STAMP, line)[1]
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    first_epoch = next(line for line in lines if "first epoch done" in line)
    return at(lines[0]), at(first_epoch), at(lines[-1])


def _epoch_seconds(log: Path) -> float:
    return float(re.search(r"first epoch done: epoch \d+ took ([\d.]+) s", log.read_text())[1])


def measure(home: Path, *, trials: int, reuse: bool) -> dict:
    from nlb_ndt.hyperopt import run_search
    from nlb_ndt.paths import get_paths

    with tempfile.TemporaryDirectory(prefix="ray_", dir="/tmp") as ray_tmp:
        summary = run_search("synthetic", samples=trials, seed=1 if reuse else 2,
                             smoke_test=True, cpus_per_trial=1, num_cpus=1, max_concurrent=1,
                             gpus_per_trial=0, paths=get_paths(), ray_temp_dir=ray_tmp,
                             verbose=0, reuse_actors=reuse)
    logs = [Path(t["run_dir"]) / "trial.log" for t in summary.trials]
    times = [_times(log) for log in logs]
    gaps = [round(times[i][1] - times[i - 1][2], 2) for i in range(1, len(times))]
    epochs = [round(_epoch_seconds(log), 2) for log in logs[1:]]
    return {"reuse_actors": reuse, "trials": len(logs),
            "seconds_to_first_epoch_done": gaps, "first_epoch_seconds": epochs,
            "median_seconds_to_first_epoch_done": statistics.median(gaps),
            "median_overhead_seconds": round(statistics.median(
                g - e for g, e in zip(gaps, epochs)), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="trials per search")
    parser.add_argument("--home", default="/tmp/nlb_trial_startup", help="a scratch NLB_HOME")
    args = parser.parse_args(argv)
    home = Path(args.home)
    for var in ("NLB_DATA_RAW", "NDT_CACHE_DIR", "RAY_TUNE_HOME", "CONFIG_DIR"):
        os.environ.pop(var, None)
    os.environ["NLB_HOME"] = str(home)
    from nlb_ndt.config.render import generate_configs
    from nlb_ndt.data.synthetic import generate
    from nlb_ndt.paths import get_paths

    paths = get_paths()
    generate(paths.data_raw, like="mc_maze_small", seed=0)
    generate_configs(["synthetic"], paths.config_dir, paths=paths, overwrite=True)
    result = {"bench": "trial_startup", "cpu_count": os.cpu_count(),
              "fresh": measure(home, trials=args.trials, reuse=False),
              "reused": measure(home, trials=args.trials, reuse=True)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
