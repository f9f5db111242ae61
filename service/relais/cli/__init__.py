"""The ``relais`` command line: parsing and dispatch only.

Each command group has a module here that adds its parser and turns parsed arguments
into calls of library code (``models``, ``export``, ``serve``, ``translate``,
``evaluate``, ``token``). A command checks its arguments, input files and optional dependencies
before it does any work, and reports a refusal as ``error: ...`` with exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from relais.cli import evaluate, export, models, serve, token, translate

GROUPS = (models, export, serve, translate, evaluate, token)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relais", description="Simultaneous speech-to-speech translation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.func(args)
