"""Keep third-party INFO chatter out of an export run's output.

onnxruntime's weight-only quantiser logs a line per graph node (thousands per Whisper
model), partly through the root logger, and calls ``logging.basicConfig(level=INFO)``
when imported. A run of ``relais models prepare`` shows its own progress instead; the
details come back with ``--verbose`` (DEBUG on the ``relais_export`` logger).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from types import ModuleType

# Loggers whose INFO lines are details of a step, not progress. torch and transformers
# are left alone: they set their own loggers to WARNING when imported.
NOISY_LOGGERS = ("onnxruntime", "onnx_ir", "relais.runtime", "relais_export.vad", "relais_export.piper",
                 "relais_export.whisper")


def import_quietly(module: str) -> ModuleType:
    """Import ``module`` without letting an import-time ``logging.basicConfig`` configure the
    root logger (it is a no-op while the root logger has a handler)."""
    root = logging.getLogger()
    guard = None if root.handlers else logging.NullHandler()
    if guard is not None:
        root.addHandler(guard)
    try:
        return importlib.import_module(module)
    finally:
        if guard is not None:
            root.removeHandler(guard)


class _BelowWarning(logging.Filter):
    """Drops records below WARNING logged on the root logger itself (``logging.info(...)``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def verbose_requested() -> bool:
    """--verbose sets DEBUG, which the relais_export logger then inherits."""
    return logging.getLogger("relais_export").isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def quiet_logs(verbose: bool | None = None) -> Iterator[None]:
    """Within the block, NOISY_LOGGERS and direct root-logger calls keep only WARNING and
    above, unless ``verbose`` (default: :func:`verbose_requested`)."""
    if verbose is None:
        verbose = verbose_requested()
    if verbose:
        yield
        return
    saved = {}
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            saved[name] = logger.level
            logger.setLevel(logging.WARNING)
    root_filter = _BelowWarning()
    root = logging.getLogger()
    root.addFilter(root_filter)
    try:
        yield
    finally:
        root.removeFilter(root_filter)
        for name, level in saved.items():
            logger = logging.getLogger(name)
            if logger.level == logging.WARNING:  # not re-configured by someone else meanwhile
                logger.setLevel(level)
