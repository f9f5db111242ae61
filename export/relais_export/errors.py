"""Errors raised by the export toolchain, with messages that say what to fix."""


class ExportError(RuntimeError):
    """An input to the toolchain is missing, broken or of the wrong kind."""


def require(module: str, extra: str = "export"):
    """Import an optional heavy dependency, or fail with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError(
            f"'{module}' is needed for exporting models but is not installed; "
            f"install it with: pip install 'relais[{extra}]'"
        ) from exc
