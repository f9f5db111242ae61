"""What ``relais models prepare`` shows: a progress bar per model, then a summary.

On a terminal each model's line is redrawn in place (bar, stage, seconds) and left as
one finished line; elsewhere (CI logs, pipes) only the finished lines are written.
Details stay at DEBUG (``relais -v``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from relais_export.prepare import PrepareProgress

BAR_WIDTH = 24


class ConsoleProgress:
    """A ProgressCallback for prepare_default_set that draws one line per model on ``stream``."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._width = 0

    def __call__(self, event: PrepareProgress) -> None:
        filled = round(event.fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = (f"[{event.index}/{event.total}] {event.model:<16} [{bar}] {event.stage} "
                f"({event.elapsed_s:.0f} s)")
        if self.live:
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if event.done else ""))
            self._width = 0 if event.done else len(line)
            self.stream.flush()
        elif event.done:
            self.stream.write(line + "\n")
            self.stream.flush()


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6


def run_prepare(models_dir: Path | None, precisions: tuple[str, ...], out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """``relais models prepare``: progress on ``err``, a summary on ``out``; exit status."""
    from relais_export.errors import ExportError
    from relais_export.prepare import prepare_default_set

    out, err = out or sys.stdout, err or sys.stderr
    start = time.monotonic()
    try:
        model_set = prepare_default_set(models_dir, precisions=precisions, progress=ConsoleProgress(err))
    except ExportError as exc:
        print(f"error: {exc}", file=err)
        return 1
    print(f"model set ready: {model_set.root / 'models.yaml'} ({len(model_set.models)} models: "
          f"{', '.join(sorted(model_set.models))}; {_size_mb(model_set.root):.0f} MB; "
          f"{time.monotonic() - start:.0f} s)", file=out)
    return 0
