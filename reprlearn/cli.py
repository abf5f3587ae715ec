"""The `reprlearn` command line: parse arguments, call the library, report errors plainly."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def _train(args) -> int:
    from reprlearn.config import load_config
    from reprlearn.train import run_training

    cfg = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    command = "reprlearn " + " ".join(shlex.quote(a) for a in args.argv)
    report = run_training(cfg, out, command=command, verbose=0 if args.quiet else 1)
    test, raw = report["metrics"]["test"], report["metrics"]["baseline_raw"]
    print(f"\nTest MAP@R {test['map_at_r']:.4f} (raw pixels {raw['map_at_r']:.4f}), "
          f"P@1 {test['precision_at_1']:.4f}, ROC AUC {report['metrics']['verification']['roc_auc']:.4f}")
    print(f"Report: {out / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprlearn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and report one run from a YAML config")
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (repeatable), e.g. --set train.epochs=2")
    train.add_argument("--out", help="run folder (default runs/<config name>); re-running resumes")
    train.add_argument("--quiet", action="store_true", help="no Keras progress bars")
    train.set_defaults(handler=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from reprlearn.config import ConfigError
    from reprlearn.data import DatasetNotFoundError

    try:
        return args.handler(args)
    except (ConfigError, DatasetNotFoundError, ValueError) as err:
        print(f"reprlearn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
