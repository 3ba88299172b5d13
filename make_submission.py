"""Rank a search's snapshots by val co-bps, choose the ensemble size, write and score a
submission h5 (EvalAI layout).

Per run NAME, $NLB_HOME/submissions/NAME/ gets models.csv (every snapshot scored on val),
ensemble.csv / ensemble.json / ensemble.png (val co-bps of the top-N mean for N = 1..M)
and search.png. The submission h5 (default submissions/NAME/submission-PHASE.h5) gets its
scores beside it as JSON. Several NAMEs go into one file (name the three scaling
datasets together).

Each experiment of a run (RAY_TUNE_HOME/NAME/<experiment>/) ranks the snapshot kinds its
search recorded. Experiments whose settings differ (profile, objective or snapshot kinds)
are refused unless you pick some (--experiments) or pool them (--combine-experiments).
Every argument is checked before any snapshot is scored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nlb_ndt.cli import make_parser, positive_int, run
from nlb_ndt.config.layout import SNAPSHOT_KINDS
from nlb_ndt.datasets import PHASES
from nlb_ndt.scoring.ensemble import ENSEMBLE_METHODS


def _size(text: str) -> int | str:
    """argparse type of --ensemble-size: "auto" or a whole number >= 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, not {text!r}")
    return int(text)


def _names(text: str) -> tuple[str, ...]:
    """argparse type of --experiments: comma-separated experiment folder names."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"expected experiment names, got {text!r}")
    return names


def _kinds(text: str) -> tuple[str, ...]:
    """argparse type of --snapshots: comma-separated snapshot kinds."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in SNAPSHOT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown snapshot kind(s) {', '.join(bad) or text!r}; "
                                         f"choose from {','.join(SNAPSHOT_KINDS)}")
    return kinds


def _parser() -> argparse.ArgumentParser:
    """The command line: run names and the submission's options."""
    parser = make_parser(__doc__)
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="run name: a dataset (mc_maze, ...) or 'synthetic'")
    parser.add_argument("--phase", choices=PHASES, default="val",
                        help="val: rates on the val trials; test: on the test trials")
    parser.add_argument("--ensemble-size", default="auto", type=_size,
                        help="N, or 'auto' for the N with the best val co-bps")
    parser.add_argument("--max-ensemble", type=positive_int, default=50,
                        help="largest N swept (greedy: the steps it takes)")
    parser.add_argument("--out", type=Path, help="submission h5 to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing submission and its scores")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--snapshots", type=_kinds, default=None,
                        help="snapshot kinds that are candidates in every experiment, e.g. "
                             "lve,lfve (default: each experiment's own, recorded from its "
                             "search profile; else lve,lfve,cobps)")
    parser.add_argument("--ensemble-method", choices=ENSEMBLE_METHODS, default="topn",
                        help="topn: mean of the N best (AESMTE3); greedy: forward selection "
                             "with replacement on val co-bps")
    parser.add_argument("--refit", action="store_true",
                        help="test phase: retrain each member on train+val (same seed, its "
                             "snapshot's epochs) and average those; refused for --phase val")
    parser.add_argument("--experiments", type=_names, default=None, metavar="NAME,...",
                        help="only these experiment folders of the run(s) are candidates, "
                             "e.g. mc_maze-s42-aesmte3; all of them when not given")
    parser.add_argument("--combine-experiments", action="store_true",
                        help="pool experiments whose settings (profile, objective, snapshot "
                             "kinds) differ, each ranking its own kinds (models.csv and "
                             "ensemble.json record each snapshot's experiment, profile and "
                             "model family); without it such a mix is refused")
    return parser


def main(argv=None) -> int:
    parser = _parser()

    def body(args) -> int:
        from nlb_ndt.scoring.evaluation import format_scores
        from nlb_ndt.stages.make_submission import make_submission

        result = make_submission(args.names, phase=args.phase,
                                 ensemble_size=args.ensemble_size,
                                 max_ensemble=args.max_ensemble, out=args.out,
                                 overwrite=args.overwrite, device=args.device,
                                 snapshots=args.snapshots,
                                 ensemble_method=args.ensemble_method, refit=args.refit,
                                 experiments=args.experiments,
                                 combine_experiments=args.combine_experiments)
        for name, ens in result.ensembles.items():
            print(f"{name}: {ens['method']} ensemble of {ens['chosen_n']} "
                  f"({ens['distinct_members']} distinct; {ens['chosen_by']}; "
                  f"best top-N on val = {ens['argmax_n']})")
            if len(ens.get("experiments") or ()) > 1:
                print(f"  pooled experiments: {', '.join(ens['experiments'])}")
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
