"""The ``relais`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _models_prepare(args) -> int:
    try:
        from relais_export.errors import ExportError
        from relais_export.prepare import prepare_default_set
    except ImportError as exc:
        print(f"relais models prepare needs the export toolchain: pip install 'relais[export,models]' ({exc})",
              file=sys.stderr)
        return 2
    try:
        model_set = prepare_default_set(args.dir, precisions=tuple(args.precision))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model set ready: {model_set.root / 'models.yaml'} ({', '.join(sorted(model_set.models))})")
    return 0


def _models_verify(args) -> int:
    from relais.models.manifest import ManifestError
    from relais.models.verify import verify_model_set

    try:
        report = verify_model_set(args.dir)
    except ManifestError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(report.verdict())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relais", description="Simultaneous speech-to-speech translation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="prepare and verify the model set").add_subparsers(dest="action", required=True)
    prep = models.add_parser("prepare", help="build the default model set from installed packages")
    prep.add_argument("--dir", type=Path, default=None,
                      help="model set directory (default: $RELAIS_MODELS_DIR or ~/.cache/relais/models)")
    prep.add_argument("--precision", action="append", choices=["fp32", "fp16", "int8"],
                      help="Whisper precisions to export (repeatable; default fp32 and int8; fp16 for GPUs)")
    prep.set_defaults(func=_models_prepare)
    ver = models.add_parser("verify", help="re-run the parity checks of a prepared set")
    ver.add_argument("--dir", type=Path, default=None, help="model set directory")
    ver.set_defaults(func=_models_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if getattr(args, "precision", None) is None and hasattr(args, "precision"):
        args.precision = ["fp32", "int8"]
    elif getattr(args, "precision", None) and "fp32" not in args.precision:
        args.precision = ["fp32", *args.precision]  # fp32 is the parity reference
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
