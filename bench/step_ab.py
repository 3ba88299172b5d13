"""Interleaved A/B of the training step between versions of nlb_ndt/model/ndt.py; prints JSON.

    cp src/nlb_ndt/model/ndt.py /tmp/ndt_before.py      # before a change
    python bench/step_ab.py --variant before=/tmp/ndt_before.py --variant after=current

Each variant is an ndt.py file ("current" is the installed one), optionally followed by
":flush" to run it with torch.set_flush_denormal(True). Every variant gets its own
trainer on the same data and weights (bench/train_speed.py's config for --shape, with
--trials training trials, so one timed unit is a few real `train_epoch` batches), and the
variants take turns, in ABBA order, --reps times. On a machine shared with other jobs the
load drifts by the minute, so only side-by-side numbers compare: the report gives each
variant's median seconds per batch, its spread, and the median of the per-round ratios to
the first variant. The load average is sampled at every round.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import bench_config, swap_ndt  # noqa: E402


def build(variant: str, args, arrays, tmp: str):
    from nlb_ndt.training.run import build_trainer

    cfg = bench_config(args.shape, plain=args.plain, amp=False, epochs=10**6,
                       model=args.model, extra=args.opts)
    with swap_ndt(None if variant == "current" else variant):
        trainer = build_trainer(cfg, run_dir=tmp, device="cpu", arrays=arrays,
                                val_heldout_target=arrays["eval_spikes_heldout"])
    trainer.epoch = 1  # past the warmup epoch's lr = 0
    return trainer


def timed_epoch(trainer) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of this process (all its threads) and page faults."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train_epoch()
    return (time.perf_counter() - t0, time.process_time() - c0,
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=PATH of an ndt.py ('current' for the installed one)")
    parser.add_argument("--shape", default="mc_maze")
    parser.add_argument("--model", default="ndt", choices=["ndt", "stndt"])
    parser.add_argument("--trials", type=int, default=320, help="training trials per unit")
    parser.add_argument("--reps", type=int, default=6, help="ABBA rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="MODEL.FAST_ATTENTION False")
    parser.add_argument("--opts", nargs="*", default=[],
                        help="extra KEY VALUE config pairs, e.g. MODEL.CONTEXT_FORWARD 8")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from nlb_ndt.datasets import get_spec
    from nlb_ndt.testing import poisson_tensors

    spec = get_spec(args.shape)
    arrays = poisson_tensors(spec, 5)
    for key in [k for k in arrays if k.startswith("train_")]:
        arrays[key] = arrays[key][: args.trials]
    names = [v.split("=", 1)[0] for v in args.variant]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [v.split("=", 1)[1] for v in args.variant]
        flush = [p.endswith(":flush") for p in paths]
        trainers = [build(p.removesuffix(":flush"), args, arrays, f"{tmp}/{i}")
                    for i, p in enumerate(paths)]
        for trainer, flushed in zip(trainers, flush):  # warm-up: allocator, first calls
            torch.set_flush_denormal(flushed)
            trainer.train_epoch()
        times = {n: [] for n in names}
        cpu = {n: [] for n in names}
        faults = {n: [] for n in names}
        loads = []
        batches = -(-args.trials // trainers[0].train_cfg.batch_size)
        for r in range(args.reps):
            order = list(range(len(names)))
            for i in order if r % 2 == 0 else order[::-1]:
                torch.set_flush_denormal(flush[i])
                seconds, cpu_seconds, fault_count = timed_epoch(trainers[i])
                times[names[i]].append(seconds / batches)
                cpu[names[i]].append(cpu_seconds / batches)
                faults[names[i]].append(fault_count / batches)
            loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
    base, cpu_base = np.array(times[names[0]]), np.array(cpu[names[0]])
    report = {"shape": args.shape, "model": args.model, "threads": args.threads,
              "batches_per_unit": batches, "reps": args.reps, "opts": args.opts,
              "loadavg_1min": [min(loads), float(np.median(loads)), max(loads)], "variants": {}}
    for n in names:
        t = np.array(times[n])
        report["variants"][n] = {
            "median_s_per_batch": round(float(np.median(t)), 4),
            "min": round(float(t.min()), 4), "max": round(float(t.max()), 4),
            "ratio_to_first": round(float(np.median(t / base)), 3),
            # with one thread, CPU time is the work done, whatever the load
            "median_cpu_s_per_batch": round(float(np.median(cpu[n])), 4),
            "cpu_ratio_to_first": round(float(np.median(np.array(cpu[n]) / cpu_base)), 3),
            "faults_per_batch": round(float(np.median(faults[n])), 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
