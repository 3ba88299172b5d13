"""The embedded end-to-end demo (`make demo`): the whole method on a synthetic dataset.

With NLB_HOME set to ./demo_output (never your real NLB_HOME) it:
  1. writes a synthetic mc_maze_small-shaped dataset (genuine NWB files + ground truth),
  2. renders the configs,
  3. runs a real Bayesian search on Ray Tune (CPU, 2 trials at a time) on the 20 ms track,
  4. ranks every snapshot by val co-bps and picks the ensemble size,
  5. writes and scores a val-phase and a test-phase submission,
  6. scores a best-single-model, a spike-smoothing baseline and the true rates alike,
and prints one table, writing demo_output/summary.json and plots. Re-running continues
(finished trials are kept) instead of repeating work.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NAME, DATASET, BIN_MS = "synthetic", "mc_maze_small", 20
COLUMNS = ("co-bps", "vel R2", "psth R2", "fp-bps")


def _isolate(home: Path) -> None:
    """Point every path variable at the demo folder (Ray workers inherit this)."""
    from nlb_ndt.paths import PATH_VARIABLES

    for var in PATH_VARIABLES:
        os.environ.pop(var, None)
    os.environ["NLB_HOME"] = str(home)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _set_aside_stale(home: Path) -> None:
    """Move aside a demo folder made from other templates (renamed; nothing is deleted).

    A search continues only with the config it started with, so a demo folder left by an
    earlier version of the synthetic template cannot be resumed; it is kept next to the
    new one as <home>.old-<time>.
    """
    import hashlib

    from nlb_ndt.templates import TEMPLATE_DIR

    digest = hashlib.sha256(b"".join((TEMPLATE_DIR / f"{NAME}{ext}").read_bytes()
                                     for ext in (".yaml", ".json"))).hexdigest()
    stamp = home / "demo_templates.sha256"
    started = (home / "ray_results").exists()
    if started and (not stamp.exists() or stamp.read_text().strip() != digest):
        base = f"{home.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        aside, n = home.with_name(base), 1
        while aside.exists():
            n += 1
            aside = home.with_name(f"{base}-{n}")
        home.rename(aside)
        print(f"{home} was made with other demo templates; moved it to {aside}")
    home.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def _score(target, rates: dict, group: str) -> dict:
    from nlb_ndt.evaluation import score_submission

    (row,) = score_submission(target, {group: rates})
    return {m: row.get(m) for m in COLUMNS}


def _table(rows: list[tuple[str, str, dict]]) -> str:
    head = f"{'phase':<6} {'model':<34}" + "".join(f"{c:>10}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for phase, label, scores in rows:
        cells = "".join(f"{scores[c]:>10.4f}" if scores.get(c) is not None else f"{'-':>10}"
                        for c in COLUMNS)
        lines.append(f"{phase:<6} {label:<34}{cells}")
    return "\n".join(lines)


def run_demo(home: Path, *, samples: int, seed: int, concurrent: int) -> dict:
    from nlb_ndt import preprocess
    from nlb_ndt.baselines import smoothing_rates
    from nlb_ndt.templates import generate_configs
    from nlb_ndt.datasets import PHASES, get_spec
    from nlb_ndt.hyperopt import run_search
    from nlb_ndt.paths import get_paths
    from nlb_ndt.plots import plot_rates_vs_truth
    from nlb_ndt.submission import read_submission
    from nlb_ndt.submit import make_submission
    from nlb_ndt.synthetic import generate, true_rates

    paths = get_paths()
    group = get_spec(DATASET).group(BIN_MS)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    generate(paths.data_raw, like=DATASET, seed=seed)  # skips work already done
    lap("synthetic data")
    generate_configs([NAME], paths.config_dir, paths=paths)
    for phase in PHASES:
        preprocess.build_tensors(DATASET, phase=phase, bin_ms=BIN_MS, paths=paths)
    lap("configs and tensors")

    with tempfile.TemporaryDirectory(prefix="ray_", dir="/tmp") as ray_tmp:
        search = run_search(NAME, samples=samples, seed=seed, gpus_per_trial=0,
                            cpus_per_trial=1, max_concurrent=concurrent, paths=paths,
                            num_cpus=concurrent, ray_temp_dir=ray_tmp, verbose=1)
    lap("search")

    out_dir = paths.submissions_dir / NAME
    # The best single model first: the ensemble plot keeps the last submission's N.
    single = make_submission([NAME], phase="val", ensemble_size=1, overwrite=True,
                             out=out_dir / "best-single-val.h5", paths=paths)
    single_test = make_submission([NAME], phase="test", ensemble_size=1, overwrite=True,
                                  out=out_dir / "best-single-test.h5", paths=paths)
    val = make_submission([NAME], phase="val", overwrite=True, paths=paths)
    test = make_submission([NAME], phase="test", overwrite=True, paths=paths)
    for result in (val, test):  # the synthetic data knows the truth: show it beside the rates
        true = true_rates(paths.data_raw, DATASET, phase=result.phase, bin_ms=BIN_MS)
        result.figures.append(plot_rates_vs_truth(
            read_submission(result.path)[group], true,
            result.path.with_name(f"{result.path.stem}.rates.{group}.png"), bin_ms=BIN_MS,
            title=f"{NAME} ({result.phase}): ensemble of "
                  f"{result.ensembles[NAME]['chosen_n']} vs true rates, eval trial 0"))
    lap("ranking and submissions")

    val_target = str(preprocess.target_path(DATASET, bin_ms=BIN_MS, paths=paths))
    test_target = str(paths.eval_data_test)
    rows = [("val", f"NDT ensemble (N={val.ensembles[NAME]['chosen_n']})",
             {m: val.scores[0].get(m) for m in COLUMNS}),
            ("val", "best single NDT", {m: single.scores[0].get(m) for m in COLUMNS})]
    for phase, target in (("val", val_target), ("test", test_target)):
        tensors = preprocess.load_tensors(DATASET, phase=phase, bin_ms=BIN_MS, paths=paths)
        smooth = _score(target, smoothing_rates(tensors, bin_ms=BIN_MS), group)
        truth = _score(target, true_rates(paths.data_raw, DATASET, phase=phase, bin_ms=BIN_MS),
                       group)
        if phase == "test":
            rows += [("test", f"NDT ensemble (N={test.ensembles[NAME]['chosen_n']})",
                      {m: test.scores[0].get(m) for m in COLUMNS}),
                     ("test", "best single NDT",
                      {m: single_test.scores[0].get(m) for m in COLUMNS})]
        rows += [(phase, "smoothing baseline", smooth), (phase, "true rates", truth)]
    lap("baselines")

    by = {(p, label.split(" (")[0]): s for p, label, s in rows}
    ens, best, smooth, truth = (by[("val", k)]["co-bps"] for k in
                                ("NDT ensemble", "best single NDT", "smoothing baseline",
                                 "true rates"))
    checks = {
        "ensemble > best single > smoothing (val co-bps)": bool(ens > best > smooth),
        "ensemble >= 0.7 x true rates (val co-bps)": bool(ens >= 0.7 * truth),
    }
    summary = {
        "dataset": f"synthetic {DATASET}-shaped, {BIN_MS} ms bins", "seed": seed,
        "trials": len(search.trials), "experiment": str(search.experiment_dir),
        "rows": [{"phase": p, "model": label, **s} for p, label, s in rows],
        "ensemble_over_truth": round(ens / truth, 3) if truth else None,
        "checks": checks, "seconds": timings, "total_seconds": round(sum(timings.values()), 1),
        "files": {"val_submission": str(val.path), "test_submission": str(test.path),
                  "figures": sorted({str(f) for r in (val, test) for f in r.figures})},
    }
    (home / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + _table(rows))
    print(f"\nensemble / true-rate co-bps (val): {summary['ensemble_over_truth']}")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'MISSED'}] {name}")
    print(f"time: {summary['total_seconds']} s ({timings})")
    print(f"summary: {home / 'summary.json'}; plots: {out_dir}")
    return summary


def main(argv=None) -> int:
    from nlb_ndt.cli import make_parser, run

    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "demo_output"),
                        help="NLB_HOME of the demo (never your real one)")
    parser.add_argument("--samples", type=int, default=32, help="trials in the search")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    parser.add_argument("--seed", type=int, default=0, help="data, search and trial seed")

    def body(args) -> int:
        home = Path(args.home).resolve()
        _set_aside_stale(home)
        _isolate(home)
        run_demo(home, samples=args.samples, seed=args.seed, concurrent=args.concurrent)
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
