"""What every command shares: how a refusal is reported, and the optional-dependency check."""

from __future__ import annotations

import sys

EXIT_REFUSED = 2  # bad arguments, missing input or dependency: nothing was done
EXIT_FAILED = 1  # the work ran and failed (an export error, a parity check)


def refuse(message: str) -> int:
    """Print ``error: message`` (no traceback) and return the exit code of a refused command."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_REFUSED


def missing_extras(*extras: str, command: str) -> str | None:
    """The message naming the ``pip install`` to run if an extra is not installed, else None."""
    from relais.extras import MissingExtras, require_extras

    try:
        require_extras(*extras, command=command)
    except MissingExtras as exc:
        return str(exc)
    return None


def whisper_precisions(requested: list[str] | None) -> tuple[str, ...]:
    """``--precision`` values: fp32 and int8 by default; fp32 always (it is the parity reference)."""
    if not requested:
        return ("fp32", "int8")
    return tuple(dict.fromkeys(["fp32", *requested]))
