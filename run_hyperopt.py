"""Bayesian hyperparameter search for one dataset on Ray Tune (GP + gp_hedge, as AESMTE3).

Trains NAME's config ($CONFIG_DIR/NAME.yaml, search space NAME.json) with trials under
$RAY_TUNE_HOME/NAME/NAME-s<seed>/. Running the same command again continues that
experiment until it holds --samples trials; --fresh starts a new one next to it.
--bin-ms 20 trains on NLB's 20 ms track as run NAME_20 (make_submission.py NAME_20).
--scheduler asha stops hopeless trials early; --time-budget HOURS stops the search when the
experiment has run that long, resumably (run again with a larger budget to continue).
"""

from __future__ import annotations

import sys

from nlb_ndt.cli import make_parser, non_negative_float, positive_float, positive_int, run
from nlb_ndt.config.render import profile_names


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("name", metavar="NAME",
                        help="a dataset (mc_maze, mc_rtt, ...) or 'synthetic'")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="trials the experiment should hold; None means 100 "
                             "(2 with --smoke-test)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seeds the searcher; trial i trains with seed + i")
    parser.add_argument("--objective", default=None,
                        choices=("best_masked_loss", "best_val_cobps"),
                        help="minimise best masked val loss (the original; the default) "
                             "or maximise val co-bps")
    parser.add_argument("--gpus-per-trial", type=non_negative_float, default=None,
                        help="GPU share per trial (default 0.5; 0.125 packs 8 trials on a "
                             "GPU); no GPU in the cluster: CPU trials")
    parser.add_argument("--cpus-per-trial", type=non_negative_float, default=None,
                        help="CPUs per trial (default 3)")
    parser.add_argument("--max-concurrent", type=positive_int, default=None,
                        help="trials at once (default: as many as the resources allow)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (e.g. 'auto' or HOST:PORT); "
                             "RAY_TUNE_HOME must then be on storage every node can reach")
    parser.add_argument("--smoke-test", action="store_true",
                        help="a few epochs per trial, in a separate '-smoke' experiment")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new experiment next to the newest one (deletes nothing)")
    parser.add_argument("--bin-ms", type=int, default=None, choices=(5, 20),
                        help="bin width in ms (default: the config's); 20 is NLB's 20 ms "
                             "track, a separate run named NAME_20 (e.g. mc_maze_small_20)")
    parser.add_argument("--profile", default=None, choices=profile_names(),
                        help="a named settings set from configs/profiles/; 'aesmte3' "
                             "reproduces the original exactly (fp32, its AdamW and lfve, "
                             "lve+lfve snapshots, masked-loss objective)")
    parser.add_argument("--scheduler", default=None, choices=("fifo", "asha", "pbt"),
                        help="fifo: every trial trains to its end (AESMTE3; the default "
                             "unless the profile says otherwise); asha: trials that trail "
                             "at 1/9 and 1/3 of training stop there (their snapshots are "
                             "kept and ranked); pbt: population-based training (needs a "
                             "profile with PBT settings: --profile autolfads)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="HOURS",
                        help="wall hours the experiment may take over all its runs; then "
                             "no trial starts and running ones pause at their next "
                             "validation with their state saved")
    parser.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                        help="start a new worker process for every trial (slower start)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --opts TRAIN.BATCH_SIZE 32")

    def body(args) -> int:
        from nlb_ndt.hyperopt import run_search

        summary = run_search(
            args.name, samples=args.samples, seed=args.seed, objective=args.objective,
            gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
            max_concurrent=args.max_concurrent, address=args.address,
            smoke_test=args.smoke_test, fresh=args.fresh, opts=args.opts,
            bin_ms=args.bin_ms, profile=args.profile, scheduler=args.scheduler,
            time_budget=args.time_budget, reuse_actors=args.reuse_actors,
            verbose=0 if args.quiet else 1)
        print(summary.format_report(top=10))
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
