"""``relais models prepare|verify``: build the default model set from installed packages, re-check one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relais.cli.common import EXIT_FAILED, missing_extras, refuse, whisper_precisions
from relais.runtime.ort import PRECISIONS

PREPARE_EXTRAS = ("models", "export")  # the weights' packages, and the toolchain that converts them


def add_parser(sub: argparse._SubParsersAction) -> None:
    actions = sub.add_parser("models", help="prepare and verify the model set").add_subparsers(
        dest="action", required=True)
    prep = actions.add_parser("prepare", help="build the default model set from installed packages")
    prep.add_argument("--dir", type=Path, default=None,
                      help="model set directory (default: $RELAIS_MODELS_DIR or ~/.cache/relais/models)")
    prep.add_argument("--precision", action="append", choices=PRECISIONS,
                      help="Whisper precisions to export (repeatable; default fp32 and int8; fp16 for GPUs)")
    prep.set_defaults(func=prepare)
    ver = actions.add_parser("verify", help="re-run the parity checks of a prepared set")
    ver.add_argument("--dir", type=Path, default=None, help="model set directory")
    ver.set_defaults(func=verify)


def prepare(args: argparse.Namespace) -> int:
    if message := missing_extras(*PREPARE_EXTRAS, command="relais models prepare"):
        return refuse(message)
    from relais_export.errors import ExportError
    from relais_export.prepare import prepare_default_set

    try:
        model_set = prepare_default_set(args.dir, precisions=whisper_precisions(args.precision))
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"model set ready: {model_set.root / 'models.yaml'} ({', '.join(sorted(model_set.models))})")
    return 0


def verify(args: argparse.Namespace) -> int:
    from relais.models.manifest import ManifestError
    from relais.models.verify import verify_model_set

    try:
        report = verify_model_set(args.dir)
    except ManifestError as exc:
        print(f"FAILED: {exc}")
        return EXIT_FAILED
    print(report.verdict())
    return 0 if report.ok else EXIT_FAILED
