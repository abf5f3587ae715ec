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


def _export(args) -> int:
    from reprlearn.export import export_run

    print(f"Exporting {args.run_dir} → {args.out}")
    result = export_run(args.run_dir, args.out, args.format, args.quantize, args.name, args.version, args.force)
    if result["saved_model"]:
        print(f"SavedModel: {result['saved_model']} (signatures: {', '.join(result['signatures'])})")
    print(f"TFLite/ONNX and parity report: {result['artifacts']}")
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
    export = commands.add_parser("export", help="export a run's model to SavedModel, TFLite and ONNX, checked "
                                                "against Keras")
    export.add_argument("run_dir", help="a finished run folder (holds model.keras)")
    export.add_argument("--out", required=True, help="model base folder; the SavedModel goes to OUT/NAME/VERSION")
    export.add_argument("--format", default="saved_model,tflite,onnx", help="comma-separated formats")
    export.add_argument("--quantize", default="none,dynamic,float16,int8", help="comma-separated TFLite variants")
    export.add_argument("--name", help="model name (default: the run folder's name)")
    export.add_argument("--version", type=int, help="version number (default: the next free one)")
    export.add_argument("--force", action="store_true", help="replace an existing version")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from reprlearn.config import ConfigError
    from reprlearn.data import DatasetNotFoundError
    from reprlearn.export import ExportError

    try:
        return args.handler(args)
    except (ConfigError, DatasetNotFoundError, ExportError, ValueError) as err:
        print(f"reprlearn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
