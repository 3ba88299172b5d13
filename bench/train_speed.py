"""Training speed of one NDT (or STNDT) on data of a real dataset's shape; prints JSON.

    python bench/train_speed.py --shape mc_maze --device cpu
    python bench/train_speed.py --shape mc_maze_small --device cpu --epochs 2 --model stndt
    python bench/train_speed.py --shape mc_maze --device cuda --concurrent 8

The data are Poisson counts with the dataset's exact shape (trials, bins, neurons at
5 ms), so the work per epoch equals a real run's; the model is the dataset's template
(configs/templates/<shape>.yaml) with search-space mid-range values for the searched
keys (context 50/50, dropout 0.5). `--plain` runs the straightforward path (unfused
attention, fp32), which is what the original architecture costs. `--concurrent K` starts
K copies at once (as K trials sharing one GPU) and reports each one's speed. `--model
stndt` adds STNDT's attention over neurons (MODEL.SPATIAL_ATTENTION) to the same template;
`--model lfads` trains LFADS with the autolfads profile's sizes and batch for the shape.
For A/Bs: `--ndt FILE` times the NDT of another copy of nlb_ndt/model/ndt.py (one copied
aside before a change), `--opts KEY VALUE ...` changes the config, `--compile` and
`--flush-denormal` try those levers; `--no-amp` forces fp32 where bf16 is native.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def bench_config(shape: str, *, plain: bool, amp: bool, epochs: int, model: str = "ndt",
                 extra=()):
    from nlb_ndt.config.defaults import load_config
    from nlb_ndt.config.render import TEMPLATE_DIR

    opts = ["MODEL.CONTEXT_FORWARD", 50, "MODEL.CONTEXT_BACKWARD", 50,
            "MODEL.DROPOUT", 0.5, "MODEL.DROPOUT_RATES", 0.5, "MODEL.DROPOUT_EMBEDDING", 0.5,
            "MODEL.FAST_ATTENTION", not plain, "TRAIN.AMP", amp and not plain,
            "TRAIN.NUM_UPDATES", epochs, "TRAIN.LR.WARMUP", 1, "TRAIN.DO_VAL", False,
            "TRAIN.LOG_INTERVAL", 10**6, "TRAIN.CHECKPOINT_INTERVAL", 10**6]
    if model == "stndt":  # the same template and shape, with attention over neurons added
        opts += ["MODEL.SPATIAL_ATTENTION", True]
    if model == "lfads":  # AutoLFADS's settings for this dataset, searched keys mid-range
        opts += lfads_opts(shape)
    return load_config(TEMPLATE_DIR / f"{shape}.yaml", opts + list(extra))


def lfads_opts(shape: str) -> list:
    """The autolfads profile's config for run `shape`, with each searched key at the
    geometric (log-uniform) or arithmetic (uniform) middle of its range."""
    from nlb_ndt.config.render import load_profile

    profile = load_profile("autolfads")
    settings = {**profile.config_for(shape), "TRAIN.NUM_UPDATES": None}
    for key, dim in profile.search_space.items():
        low, high = float(dim["low"]), float(dim["high"])
        settings[key] = ((low * high) ** 0.5 if dim.get("sample_fn") == "loguniform"
                         else (low + high) / 2)
    return [item for key, value in settings.items() if value is not None
            for item in (key, value)]


@contextlib.contextmanager
def swap_ndt(path: str | None):
    """Build NDTs from another copy of nlb_ndt/model/ndt.py (a file copied aside before a
    change) while inside, so before and after run in one session; None: the installed."""
    from nlb_ndt.model import factory

    if path is None:
        yield
        return
    name = f"ndt_variant_{abs(hash(str(Path(path).resolve())))}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    installed, factory.NDT = factory.NDT, module.NDT
    try:
        yield
    finally:
        factory.NDT = installed


def measure(args) -> dict:
    from nlb_ndt.datasets import get_spec
    from nlb_ndt.testing import poisson_tensors
    from nlb_ndt.training.run import build_trainer

    torch.set_num_threads(args.threads or torch.get_num_threads())
    spec = get_spec(args.shape)
    arrays = poisson_tensors(spec, 5)
    cfg = bench_config(args.shape, plain=args.plain, amp=args.amp, epochs=args.epochs + 1,
                       model=args.model, extra=args.opts)
    torch.set_flush_denormal(args.flush_denormal)
    with tempfile.TemporaryDirectory() as tmp:
        with swap_ndt(args.ndt):
            trainer = build_trainer(cfg, run_dir=tmp, device=args.device, arrays=arrays,
                                    val_heldout_target=arrays["eval_spikes_heldout"])
        if args.compile:  # the trainer compiles on CUDA only; here to time it on the CPU
            trainer.forward_fn = torch.compile(trainer.model)
        device = trainer.device
        t_first = time.perf_counter()
        trainer.epoch = 1  # skip the warmup epoch's lr = 0 (speed is what we measure)
        trainer.train_epoch()  # warm-up: allocator, kernels, compilation
        first_epoch = time.perf_counter() - t_first
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.epochs):
            t0 = time.perf_counter()
            trainer.train_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t_val = time.perf_counter()
        trainer.validate()
        val_seconds = time.perf_counter() - t_val
    sec = float(np.median(times))
    result = {
        "shape": args.shape, "model": args.model, "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else _cpu_name()),
        "threads": torch.get_num_threads(), "path": "plain" if args.plain else "fast",
        "bf16_autocast": bool(trainer.amp), "batch_size": cfg.TRAIN.BATCH_SIZE,
        "train_trials": spec.n_train, "bins": sum(spec.bins(5)), "neurons": spec.n_neurons,
        "layers": cfg.MODEL.NUM_LAYERS,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "seconds_per_epoch": round(sec, 4), "epoch_times": [round(t, 4) for t in times],
        "trials_per_second": round(spec.n_train / sec, 1),
        "validation_seconds": round(val_seconds, 4),
        "first_epoch_seconds": round(first_epoch, 4), "ndt_file": args.ndt or "installed",
        "compiled": args.compile, "flush_denormal": args.flush_denormal, "opts": args.opts,
        "loadavg_1min": float(Path("/proc/loadavg").read_text().split()[0]),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def concurrent(args) -> dict:
    """K copies at once; each prints its own JSON line."""
    cmd = [sys.executable, __file__, "--shape", args.shape, "--device", args.device,
           "--epochs", str(args.epochs), "--model", args.model,
           "--threads", str(args.threads)] + \
          (["--plain"] if args.plain else []) + ([] if args.amp else ["--no-amp"]) + \
          (["--ndt", args.ndt] if args.ndt else []) + \
          (["--opts", *args.opts] if args.opts else [])
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
             for _ in range(args.concurrent)]
    runs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    each = [r["seconds_per_epoch"] for r in runs]
    return {"concurrent": args.concurrent, "shape": args.shape, "threads_each": args.threads,
            "seconds_per_epoch_each": each,
            # K trials side by side: the epochs of all of them per second of wall time
            "seconds_per_epoch_overall": round(1.0 / sum(1.0 / t for t in each), 4),
            "device_name": runs[0]["device_name"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.epilog = "Defaults: --shape mc_maze --device cpu --epochs 3 --model ndt."
    parser.add_argument("--shape", default="mc_maze", help="dataset whose shape to use")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to train")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (median reported)")
    parser.add_argument("--model", default="ndt", choices=["ndt", "stndt", "lfads"],
                        help="ndt, stndt (MODEL.SPATIAL_ATTENTION) or lfads (autolfads profile)")
    parser.add_argument("--plain", action="store_true",
                        help="straightforward path: unfused attention, fp32")
    parser.add_argument("--no-amp", dest="amp", action="store_false",
                        help="fp32 even where bf16 is native")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--concurrent", type=int, default=0, help="run K copies at once")
    parser.add_argument("--ndt", default=None,
                        help="time the NDT of this copy of nlb_ndt/model/ndt.py (A/B)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True)")
    parser.add_argument("--opts", nargs="*", default=[],
                        help="extra config KEY VALUE pairs, e.g. MODEL.CONTEXT_FORWARD 8")
    args = parser.parse_args(argv)
    result = concurrent(args) if args.concurrent else measure(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
