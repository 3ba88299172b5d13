"""Download and extract AE Studio's released AESMTE3 checkpoints (Zenodo record 5875246).

The archive is fetched with resume, checked against the record's md5, kept in
$SUBMISSION_VALIDATION_ROOT, and extracted there so that it holds <dataset>/models.csv and
<dataset>/<trial>.<lve|lfve>.pth. Unsafe archive members are refused. A complete earlier
extraction of the same archive is skipped. Endpoint: NLB_ZENODO_API_URL.
"""

from __future__ import annotations

import sys

from nlb_ndt.cli import make_parser, run
from nlb_ndt.data.download import sources as download


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--dry-run", action="store_true",
                        help="list the archive and its size; download nothing")

    def body(args) -> None:
        results = download.download_checkpoints(dry_run=args.dry_run)
        print(download.format_results(results, dry_run=args.dry_run))

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
