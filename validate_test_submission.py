"""Check a test-phase submission against AESMTE3's released checkpoints.

Recomputes the ensemble's test-phase rates from $SUBMISSION_VALIDATION_ROOT/DATASET/
(models.csv, <trial_id>.<lve|lfve>.pth; AESMTE3's ensemble sizes and the dmfc_rsg trial
swap), one model at a time, and compares all six arrays of the file's DATASET group with
rtol 1e-5. Prints the largest difference per array; exit 0 on a match, 1 otherwise.
A checkpoint that two members name counts twice. Arguments (dataset, --rtol, --device,
the file) are checked before any checkpoint or tensor is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nlb_ndt.cli import make_parser, non_negative_float, run


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("dataset", metavar="DATASET", help="NLB dataset name, e.g. mc_maze")
    parser.add_argument("submission", metavar="SUBMISSION_H5", type=Path,
                        help="the submission file to check")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--rtol", type=non_negative_float, default=1e-5,
                        help="relative tolerance (a finite number >= 0)")

    def body(args) -> int:
        from nlb_ndt.scoring.evaluation import format_comparison
        from nlb_ndt.stages.validate_release import validate_released_submission

        result = validate_released_submission(args.dataset, args.submission,
                                              device=args.device, rtol=args.rtol)
        listed = [p.name + (f" x{n}" if n > 1 else "") for p, n in result.counts.items()]
        print(f"{args.dataset}: ensemble of {len(result.members)} released checkpoints "
              f"({len(listed)} distinct): " + ", ".join(listed))
        print(format_comparison(result.diffs, rtol=args.rtol))
        verdict = "PASS" if result.ok else "FAIL"
        print(f"{verdict}: {args.submission} {'matches' if result.ok else 'does not match'} "
              f"the recomputed rates (rtol {args.rtol:g})")
        return 0 if result.ok else 1

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
