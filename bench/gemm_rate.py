"""The matrix multiplies of one NDT training epoch: their FLOPs, this machine's rate on
their shapes, and the time floor they imply; prints JSON.

    python bench/gemm_rate.py --shape mc_maze --threads 2
    python bench/gemm_rate.py --shape mc_maze --threads 2 --ndt /tmp/ndt_before.py

One training batch (bench/train_speed.py's config: context 50/50, dropout 0.5, fp32) runs
under torch.profiler, which lists every mm / bmm / addmm / baddbmm with its shapes and
FLOPs. Each distinct shape is then timed alone (contiguous operands, the best of --repeats:
on a shared machine the median measures the neighbours) at --threads threads. An epoch is
n_train / batch_size batches, so

    epoch FLOPs = batch FLOPs x n_train / batch_size
    floor       = sum over shapes of (FLOPs per epoch / that shape's rate)

is the time an epoch would take doing nothing but its matrix multiplies at the rate they
reach alone: no training step can beat it without fewer FLOPs or faster kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import bench_config, swap_ndt  # noqa: E402

GEMMS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def profile_batch(args) -> dict[tuple, list[float]]:
    """{(op, shapes): [flops of one call, calls]} for one training batch."""
    from torch.profiler import ProfilerActivity, profile

    from nlb_ndt.model.factory import build_model
    from nlb_ndt.model.ndt import IGNORE_INDEX

    cfg = bench_config(args.shape, plain=False, amp=False, epochs=2)
    with swap_ndt(args.ndt):
        model = build_model(cfg, num_neurons=args.neurons, trial_length=args.bins,
                            max_spikes=20).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.poisson(torch.full((cfg.TRAIN.BATCH_SIZE, args.bins, args.neurons), 0.05))
    labels = torch.where(torch.rand_like(x) < 0.3, x, float(IGNORE_INDEX))

    def step():
        loss, _ = model(x, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as p:
        step()
    found: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in p.events():
        if event.name in GEMMS:
            shapes = tuple(tuple(s) for s in event.input_shapes if len(s) >= 1)
            entry = found[(event.name, shapes)]
            entry[0] = float(event.flops)
            entry[1] += 1
    return found


def time_gemm(op: str, shapes: tuple, repeats: int) -> float:
    """Fastest seconds of one call of `op` on fresh contiguous operands of `shapes`."""
    if op in ("aten::addmm", "aten::baddbmm"):
        bias, a, b = (torch.randn(s) for s in shapes[:3])
        fn = torch.addmm if op == "aten::addmm" else torch.baddbmm

        def call():
            return fn(bias, a, b)
    else:
        a, b = (torch.randn(s) for s in shapes[:2])
        fn = torch.mm if op == "aten::mm" else torch.bmm

        def call():
            return fn(a, b)
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return min(times)  # the rate a shape reaches; the rest is other jobs on the machine


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mc_maze")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ndt", default=None, help="profile this copy of ndt.py")
    args = parser.parse_args(argv)
    from nlb_ndt.datasets import get_spec

    torch.set_num_threads(args.threads)
    spec = get_spec(args.shape)
    args.bins, args.neurons = sum(spec.bins(5)), spec.n_neurons
    batches = spec.n_train / bench_config(args.shape, plain=False, amp=False,
                                          epochs=2).TRAIN.BATCH_SIZE
    rows, total_flops, floor = [], 0.0, 0.0
    for (op, shapes), (flops, calls) in sorted(profile_batch(args).items(),
                                               key=lambda kv: -kv[1][0] * kv[1][1]):
        seconds = time_gemm(op, shapes, args.repeats)
        epoch_flops = flops * calls * batches
        total_flops += epoch_flops
        floor += seconds * calls * batches
        rows.append({"op": op.split("::")[1], "shapes": shapes, "calls_per_batch": calls,
                     "gflop_per_call": round(flops / 1e9, 4),
                     "gflops_per_s": round(flops / seconds / 1e9, 1)})
    print(json.dumps({
        "shape": args.shape, "threads": args.threads, "ndt_file": args.ndt or "installed",
        "batches_per_epoch": round(batches, 2), "tflop_per_epoch": round(total_flops / 1e12, 3),
        "gemm_floor_seconds_per_epoch": round(floor, 2),
        "mean_gflops_per_s": round(total_flops / floor / 1e9, 1),
        "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0]), "gemms": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
