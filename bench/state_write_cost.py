"""What saving the training state with every snapshot costs, per epoch, on a dataset's shape.

A run now writes state.pt (model, optimizer, generators, history; flushed to disk, the
previous one kept as state.prev.pt) just before every snapshot, that is at most once per
validation. This times those writes for the model of a dataset's template and compares
them with one training epoch on Poisson data of the same shape:

    python bench/state_write_cost.py [--shape mc_maze] [--writes 5] [--device cpu]

Prints one JSON object: state size, seconds per durable write, the template's validation
interval, the epoch time, and the worst-case share of an epoch (a write at every
validation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from train_speed import bench_config  # noqa: E402 (the benchmark's own config helper)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mc_maze", help="dataset whose shape to use")
    parser.add_argument("--writes", type=int, default=5, help="state writes to time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    from nlb_ndt.config.typed import typed_config
    from nlb_ndt.datasets import get_spec
    from nlb_ndt.testing import poisson_tensors
    from nlb_ndt.training.run import build_trainer

    spec = get_spec(args.shape)
    arrays = poisson_tensors(spec, 5)
    cfg = bench_config(args.shape, plain=False, amp=False, epochs=3)
    val_interval = typed_config(bench_config(args.shape, plain=False, amp=False, epochs=3)
                                ).train.val_interval
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, run_dir=tmp, device=args.device, arrays=arrays,
                                val_heldout_target=arrays["eval_spikes_heldout"])
        trainer.epoch = 1  # past the warm-up epoch's lr = 0
        started = time.perf_counter()
        trainer.train_epoch()
        epoch_seconds = time.perf_counter() - started
        writes = []
        for _ in range(args.writes):
            trainer.epoch += 1  # a new epoch each time: nothing is skipped as already saved
            started = time.perf_counter()
            trainer.save_state()
            writes.append(time.perf_counter() - started)
        size = (Path(tmp) / "state.pt").stat().st_size
    write = statistics.median(writes)
    print(json.dumps({
        "bench": "state_write_cost", "shape": args.shape, "device": args.device,
        "state_mb": round(size / 2**20, 2), "seconds_per_write": round(write, 4),
        "writes": [round(w, 4) for w in writes], "val_interval_epochs": val_interval,
        "epoch_seconds": round(epoch_seconds, 2),
        "worst_case_share_of_an_epoch": round(write / val_interval / epoch_seconds, 5),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
