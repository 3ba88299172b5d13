"""Train one NDT from a config, without Ray (the original's single-run trainer).

CONFIG_OR_NAME is a YAML file (a rendered config, or a search trial's own config.yaml) or
a run name, read as $CONFIG_DIR/NAME.yaml. The run folder has a trial's layout
(config.yaml, run_info.json, metrics.csv, state.pt, tb/, ckpts/<id>.<lve|lfve|cobps>.pth)
and running the same command again continues it from state.pt.

Ctrl-C or SIGTERM saves the state at the end of the current epoch and exits with 130
(a second one stops at once); running the same command again continues from there.
"""

from __future__ import annotations

import sys

from nlb_ndt.cli import make_parser, run


def main(argv=None) -> int:
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("config", metavar="CONFIG_OR_NAME",
                        help="a config YAML, a trial's config.yaml, or a run name "
                             "(mc_maze, synthetic, ...) in $CONFIG_DIR")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --opts TRAIN.NUM_UPDATES 200")
    parser.add_argument("--out", default=None,
                        help="run folder (default $CHECKPOINT_DIR/<name>-s<seed>)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (default: the config's SYSTEM.DEVICE)")
    parser.add_argument("--fresh", action="store_true",
                        help="start again instead of continuing from the folder's state.pt "
                             "(the folder's files are replaced)")

    def body(args) -> int:
        from nlb_ndt.stages.train_one import train_one

        result = train_one(args.config, opts=args.opts, out=args.out, seed=args.seed,
                           device=args.device, resume=not args.fresh)
        print(result.format_report())
        return 130 if result.stopped else 0

    return run(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
