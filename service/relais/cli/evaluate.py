"""``relais eval --manifest M.tsv``: the arguments and the work are relais.eval.command's (needs relais[eval])."""

from __future__ import annotations

import argparse

from relais.cli.common import missing_extras, refuse

EXTRAS = ("eval",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from relais.eval.command import add_arguments

    ev = sub.add_parser("eval", help="quality and latency of simultaneous translation over a manifest "
                                     "(like the papers)")
    add_arguments(ev)
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if message := missing_extras(*EXTRAS, command="relais eval"):
        return refuse(message)
    from relais.console import quiet_library_logs
    from relais.eval.command import run as evaluate

    with quiet_library_logs(args.verbose):
        return evaluate(args)
