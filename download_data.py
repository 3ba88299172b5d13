"""Download the NLB'21 NWB files from DANDI, and optionally nlb_tools' test-split ground truth.

Files land in $NLB_DATA_RAW/<dandiset>/<subject>/<file>.nwb (the DANDI layout) and, with
--eval-data, $NLB_DATA_RAW/eval_data_test.h5 (--eval-data alone fetches only that file).
Each file is verified against its published sha256 before it is moved into place; an
interrupted run resumes where it stopped, and files already present and verified are
skipped. Endpoints: NLB_DANDI_API_URL, NLB_EVAL_DATA_URL.
"""

from __future__ import annotations

import argparse
import sys

from nlb_ndt.cli import make_parser, run
from nlb_ndt.data.download import sources as download
from nlb_ndt.datasets import DATASET_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--datasets", nargs="+", metavar="NAME", default=argparse.SUPPRESS,
                        help=f"datasets to fetch, among {', '.join(DATASET_NAMES)} (default: "
                             "all seven; none when --eval-data is given alone)")
    parser.add_argument("--version", choices=("pinned", "draft"), default="pinned",
                        help="dandiset version: the pinned published one, or the live draft")
    parser.add_argument("--eval-data", action="store_true",
                        help="fetch nlb_tools' public eval_data_test.h5 (106 MB) for test-phase "
                             "scoring, as well as the --datasets given")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files and their sizes; download nothing")

    def body(args) -> None:
        # `--eval-data` alone fetches just the ground truth (what other tools' hints ask for).
        datasets = getattr(args, "datasets", [] if args.eval_data else None)
        results = download.download_data(datasets, version=args.version,
                                          eval_data=args.eval_data, dry_run=args.dry_run)
        print(download.format_results(results, dry_run=args.dry_run))

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
