"""Render configs/templates/* into CONFIG_DIR with this machine's paths.

Each template <name>.yaml (fixed settings) and <name>.json (search space) becomes
$CONFIG_DIR/<name>.yaml and .json, with DATA.DATAPATH = NDT_CACHE_DIR, CHECKPOINT_DIR and
TRAIN.TUNE_HP_JSON filled in. A config you have edited is kept unless --overwrite.
"""

from __future__ import annotations

import sys

from nlb_ndt.cli import make_parser, run


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true",
                        help="replace configs whose content differs from the template")

    def body(args) -> int:
        from nlb_ndt.config.render import generate_configs, template_names
        from nlb_ndt.paths import get_paths

        paths = get_paths()
        report = generate_configs(template_names(), paths.config_dir,
                                  overwrite=args.overwrite, paths=paths)
        width = max(len(str(path)) for path, _ in report)
        for path, status in report:
            print(f"{str(path):<{width}}  {status}")
        if any(status == "kept" for _, status in report):
            print("some configs differ from their templates and were kept; "
                  "add --overwrite to replace them", file=sys.stderr)
        return 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
