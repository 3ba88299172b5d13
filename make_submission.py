"""Rank a search's snapshots by val co-bps, choose the ensemble size, write and score a
submission h5 (EvalAI layout).

Per run NAME, $NLB_HOME/submissions/NAME/ gets models.csv (every snapshot scored on val),
ensemble.csv / ensemble.json / ensemble.png (val co-bps of the top-N mean for N = 1..M)
and search.png. The submission h5 (default submissions/NAME/submission-PHASE.h5) gets its
scores beside it as JSON. Several NAMEs go into one file (name the three scaling
datasets together).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nlb_ndt.cli import make_parser, run
from nlb_ndt.datasets import PHASES
from nlb_ndt.ensemble import ENSEMBLE_METHODS
from nlb_ndt.runs import SNAPSHOT_KINDS


def _size(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--ensemble-size must be 'auto' or a positive integer, not {text!r}")
    return int(text)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in SNAPSHOT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown snapshot kind(s) {', '.join(bad) or text!r}; "
                                         f"choose from {','.join(SNAPSHOT_KINDS)}")
    return kinds


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="run name: a dataset (mc_maze, ...) or 'synthetic'")
    parser.add_argument("--phase", choices=PHASES, default="val",
                        help="val: rates on the val trials; test: on the test trials")
    parser.add_argument("--ensemble-size", default="auto", type=str,
                        help="N, or 'auto' for the N with the best val co-bps")
    parser.add_argument("--max-ensemble", type=int, default=50, help="largest N swept")
    parser.add_argument("--out", type=Path, help="submission h5 to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing submission and its scores")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--snapshots", type=_kinds, default=None,
                        help="snapshot kinds that are candidates, e.g. lve,lfve (default: "
                             "the search profile's, else lve,lfve,cobps)")
    parser.add_argument("--ensemble-method", choices=ENSEMBLE_METHODS, default="topn",
                        help="topn: mean of the N best (AESMTE3); greedy: forward selection "
                             "with replacement on val co-bps")
    parser.add_argument("--refit", action="store_true",
                        help="test phase: retrain each member on train+val (same seed, its "
                             "snapshot's epochs) and average those; refused for --phase val")

    def body(args) -> int:
        from nlb_ndt.evaluation import format_scores
        from nlb_ndt.submit import make_submission

        result = make_submission(args.names, phase=args.phase,
                                 ensemble_size=_size(args.ensemble_size),
                                 max_ensemble=args.max_ensemble, out=args.out,
                                 overwrite=args.overwrite, device=args.device,
                                 snapshots=args.snapshots,
                                 ensemble_method=args.ensemble_method, refit=args.refit)
        for name, ens in result.ensembles.items():
            print(f"{name}: {ens['method']} ensemble of {ens['chosen_n']} "
                  f"({ens['distinct_members']} distinct; {ens['chosen_by']}; "
                  f"best top-N on val = {ens['argmax_n']})")
        print(f"wrote {result.path}")
        if result.scores is None:
            print(f"UNSCORED: {result.reason}")
        else:
            models = ", models refitted on train+val" if result.refit else ""
            print(f"scores ({result.phase} phase{models}, against {result.target}):")
            print(format_scores(result.scores))
        print(f"scores saved to {result.scores_path}")
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
