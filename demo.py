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
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Search:
    """One search of the demo: its label, the model family it trains, run_search's options,
    and the (method, refit) ensembles reported from its own snapshots."""

    label: str
    family: str
    options: dict = field(default_factory=dict)
    ensembles: tuple = (DEFAULT_ENSEMBLE, ("topn", False))


#: The default demo: AESMTE3's search (masked-loss objective) of NDTs.
NDT_SEARCH = Search("masked-loss search", "NDT", {"objective": "best_masked_loss"})
#: --compare: the co-bps objective, STNDT's and AutoLFADS's searches beside it.
COMPARE_SEARCHES = (
    Search("masked-loss search", "NDT", {"objective": "best_masked_loss"},
           (DEFAULT_ENSEMBLE, *(e for e in ENSEMBLES.values() if e != DEFAULT_ENSEMBLE))),
    Search("co-bps search", "NDT", {"objective": "best_val_cobps"}),
    Search("STNDT search", "STNDT", {"profile": "stndt"}),
    Search("AutoLFADS search", "LFADS", {"profile": "autolfads"}),
)


def _search_ensembles(search: Search, experiment: str, rows: list, *, paths, out_dir: Path,
                      first: bool) -> list:
    """The best single model and each ensemble of one search's snapshots, on both phases;
    returns the files worth showing (the default ensemble's, for the first search)."""
    from nlb_ndt.data.synthetic import true_rates
    from nlb_ndt.datasets import PHASES, get_spec
    from nlb_ndt.scoring.evalai_file import read_submission
    from nlb_ndt.scoring.plots import plot_rates_vs_truth
    from nlb_ndt.stages.make_submission import make_submission

    group, files, tag = get_spec(DATASET).group(BIN_MS), [], experiment
    for phase in PHASES:
        single = make_submission([NAME], phase=phase, ensemble_size=1, overwrite=True,
                                 out=out_dir / f"best-single.{tag}-{phase}.h5",
                                 experiments=[experiment], paths=paths)
        _add(rows, phase, f"best single {search.family}", search.label, single.scores[0])
    for method, refit in search.ensembles:
        for phase in ("test",) if refit else PHASES:
            started = time.perf_counter()
            label = f"{method}{'-refit' if refit else ''}.{tag}"
            result = make_submission([NAME], phase=phase, ensemble_method=method, refit=refit,
                                     overwrite=True, experiments=[experiment],
                                     out=out_dir / f"{label}-{phase}.h5", paths=paths)
            ens = result.ensembles[NAME]
            _add(rows, phase, f"{search.family} ensemble (N={ens['chosen_n']}, "
                 f"{ens['distinct_members']} distinct)", _method_label(method, refit, search),
                 result.scores[0], seconds=round(time.perf_counter() - started, 1))
            if first and (method, refit) == search.ensembles[0]:
                true = true_rates(paths.data_raw, DATASET, phase=phase, bin_ms=BIN_MS)
                files.append(plot_rates_vs_truth(
                    read_submission(result.path)[group], true,
                    result.path.with_name(f"{result.path.stem}.rates.{group}.png"),
                    bin_ms=BIN_MS, title=f"{NAME} ({phase}): {method} ensemble of "
                    f"{ens['chosen_n']} vs true rates, eval trial 0"))
                files += [result.path, *result.figures]
    return files


def _mixed_ensemble(experiments: list[str], rows: list, *, paths, out_dir: Path) -> None:
    """Greedy selection over every search's snapshots together (each with its own
    settings): the cross-family ensemble."""
    from nlb_ndt.datasets import PHASES
    from nlb_ndt.stages.make_submission import make_submission

    for phase in PHASES:
        result = make_submission([NAME], phase=phase, ensemble_method="greedy",
                                 overwrite=True, experiments=experiments,
                                 combine_experiments=True,
                                 out=out_dir / f"greedy-mixed-{phase}.h5", paths=paths)
        ens = result.ensembles[NAME]
        families = sorted({m["family"] for m in ens["members"]})
        _add(rows, phase, f"mixed ensemble (N={ens['chosen_n']}, {'+'.join(families)})",
             "greedy, every search", result.scores[0])


def _add(rows: list, phase: str, model: str, method: str, scores: dict, **extra) -> None:
    rows.append({"phase": phase, "model": model, "method": method,
                 **{m: scores.get(m) for m in COLUMNS}, **extra})


def _method_label(method: str, refit: bool, search: Search) -> str:
    return f"{method}{' + refit' if refit else ''}, {search.label}"


def run_demo(home: Path, *, samples: int, seed: int, concurrent: int,
             searches: tuple[Search, ...] = (NDT_SEARCH,), minutes: float | None = None,
             scheduler: str | None = None) -> dict:
    """The demo. Each of `searches` is run (within `minutes` each, if given) and its
    ensembles reported; with several, the cross-family greedy ensemble too. The first
    search's first ensemble is the default, whose checks are printed."""
    from nlb_ndt.config.render import generate_configs
    from nlb_ndt.data import preprocess
    from nlb_ndt.data.synthetic import generate
    from nlb_ndt.datasets import PHASES
    from nlb_ndt.hyperopt import run_search
    from nlb_ndt.paths import get_paths

    paths = get_paths()
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
    done, files = [], []
    for index, search in enumerate(searches):
        options = dict(search.options)
        if scheduler and search.family != "LFADS":  # AutoLFADS keeps its PBT
            options["scheduler"] = scheduler
        with tempfile.TemporaryDirectory(prefix="ray_", dir="/tmp") as ray_tmp:
            result = run_search(NAME, samples=samples, seed=seed, gpus_per_trial=0,
                                cpus_per_trial=1, max_concurrent=concurrent, paths=paths,
                                num_cpus=concurrent, ray_temp_dir=ray_tmp, verbose=1,
                                time_budget=minutes / 60 if minutes else None, **options)
        done.append(result)
        lap(f"search ({search.label})")
        files += _search_ensembles(search, result.experiment_dir.name, rows, paths=paths,
                                   out_dir=out_dir, first=index == 0)
        lap(f"ranking and submissions ({search.label})")
    if len(searches) > 1:
        _mixed_ensemble([r.experiment_dir.name for r in done], rows, paths=paths,
                        out_dir=out_dir)
        lap("mixed ensemble")
    _baselines(rows, paths=paths)
    lap("baselines")
    return _report(home, rows, searches[0], done[0], seed=seed, timings=timings,
                   files=files, out_dir=out_dir)


def _baselines(rows: list, *, paths) -> None:
    """The spike-smoothing baseline and the true rates, scored like every model."""
    from nlb_ndt.data import preprocess
    from nlb_ndt.data.synthetic import true_rates
    from nlb_ndt.datasets import get_spec
    from nlb_ndt.scoring.baselines import smoothing_rates

    group = get_spec(DATASET).group(BIN_MS)
    targets = {"val": str(preprocess.target_path(DATASET, bin_ms=BIN_MS, paths=paths)),
               "test": str(paths.eval_data_test)}
    for phase, target in targets.items():
        tensors = preprocess.load_tensors(DATASET, phase=phase, bin_ms=BIN_MS, paths=paths)
        _add(rows, phase, "smoothing baseline", "-",
             _score(target, smoothing_rates(tensors, bin_ms=BIN_MS), group))
        _add(rows, phase, "true rates", "-",
             _score(target, true_rates(paths.data_raw, DATASET, phase=phase, bin_ms=BIN_MS),
                    group))


def _report(home: Path, rows: list, first: Search, search, *, seed: int, timings: dict,
            files: list, out_dir: Path) -> dict:
    """The checks of the default ensemble, summary.json and the printed table."""
    from nlb_ndt.datasets import PHASES

    def cobps(phase: str, model: str, method: str) -> float:
        (row,) = [r for r in rows if r["phase"] == phase and r["model"].startswith(model)
                  and r["method"] == method]
        return row["co-bps"]

    default = _method_label(*first.ensembles[0], first)
    topn = _method_label("topn", False, first)
    truth = {p: cobps(p, "true rates", "-") for p in PHASES}
    phases = ("test",) if first.ensembles[0][1] else PHASES  # a refit has test rows only
    model = f"{first.family} ensemble"
    checks = {
        f"ensemble > best single > smoothing ({phases[0]} co-bps)": bool(
            cobps(phases[0], model, default)
            > cobps(phases[0], f"best single {first.family}", first.label)
            > cobps(phases[0], "smoothing baseline", "-")),
        "default ensemble >= 0.7 x true rates (test co-bps)": bool(
            cobps("test", model, default) >= 0.7 * truth["test"]),
    }
    if default != topn and ("topn", False) in first.ensembles:
        checks["default ensemble > top-N (test co-bps)"] = bool(
            cobps("test", model, default) > cobps("test", model, topn))
    ratios = {p: round(cobps(p, model, default) / truth[p], 3) for p in phases}
    summary = {
        "dataset": f"synthetic {DATASET}-shaped, {BIN_MS} ms bins", "seed": seed,
        "trials": len(search.trials), "experiment": str(search.experiment_dir),
        "trial_epochs": sum(int(t["epoch"] or 0) for t in search.trials),
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
    from nlb_ndt.cli import make_parser, positive_float, positive_int, run

    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(ROOT / "demo_output"),
                        help="NLB_HOME of the demo (never your real one)")
    parser.add_argument("--samples", type=positive_int, default=32, help="trials in the search")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="trials at once")
    parser.add_argument("--seed", type=int, default=0, help="data, search and trial seed")
    parser.add_argument("--compare", action="store_true",
                        help="also run the co-bps-objective, STNDT and AutoLFADS searches, "
                             "report every ensemble method (refits for the first search) "
                             "and the cross-family greedy ensemble (slow: about 5x)")
    parser.add_argument("--minutes", type=positive_float, default=None,
                        help="time budget of each search, in minutes (run_hyperopt.py "
                             "--time-budget): running it again with more continues")
    parser.add_argument("--scheduler", default=None, choices=("fifo", "asha"),
                        help="trial scheduler of the NDT searches (default: fifo)")

    def body(args) -> int:
        home = Path(args.home).resolve()
        _set_aside_stale(home)
        _isolate(home)
        run_demo(home, samples=args.samples, seed=args.seed, concurrent=args.concurrent,
                 searches=COMPARE_SEARCHES if args.compare else (NDT_SEARCH,),
                 minutes=args.minutes, scheduler=args.scheduler)
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
