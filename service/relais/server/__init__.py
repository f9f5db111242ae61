"""The gRPC server: config, metrics, error mapping, audio I/O, the SpeechTranslator servicer.

Heavy pieces import lazily: ``from relais.server import build_server`` pulls in
grpc and the servicer only when used.
"""

from __future__ import annotations

from relais.server.config import ServerConfig, load_config

__all__ = ["ServerConfig", "load_config", "build_server", "serve", "start_in_process"]


def __getattr__(name: str):
    if name in ("build_server", "serve", "start_in_process", "RelaisServer"):
        from relais.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'relais.server' has no attribute {name!r}")
