"""``relais serve``: the gRPC server; settings from the config file, then RELAIS_* environment, then flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from relais.cli.common import refuse


def add_parser(sub: argparse._SubParsersAction) -> None:
    srv = sub.add_parser("serve", help="run the gRPC server (config file, then RELAIS_* environment, then flags)")
    srv.add_argument("--config", type=Path, help="YAML config file (sections server, models, runtime, tls, auth, load, latency)")
    srv.add_argument("--host", help="listen address (default 0.0.0.0)")
    srv.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    srv.add_argument("--metrics-port", type=int, help="Prometheus port (default 9090; 0 picks a free one)")
    srv.add_argument("--web-port", type=int, help="browser page and WebSocket port (default -1: off; "
                                                  "0 picks a free one; docs/websocket.md)")
    srv.add_argument("--models", type=Path, help="model set directory (default: $RELAIS_MODELS_DIR or "
                                                 "~/.cache/relais/models)")
    srv.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config keys the flags set (those given), as ``ServerConfig.replace`` takes them."""
    server = {key: value for key, value in (("host", args.host), ("port", args.port),
                                             ("metrics_port", args.metrics_port),
                                             ("web_port", args.web_port)) if value is not None}
    overrides: dict[str, dict[str, Any]] = {"server": server} if server else {}
    if args.models is not None:
        overrides["models"] = {"dir": str(args.models)}
    return overrides


def run(args: argparse.Namespace) -> int:
    """Blocks until SIGINT/SIGTERM; a bad setting is refused before anything loads."""
    from relais.server.config import load_config

    try:
        config = load_config(args.config)
        if overrides := flag_overrides(args):
            config = config.replace(**overrides)
        _check_files(config)
    except ValueError as exc:
        return refuse(str(exc))
    print(f"relais serve: {json.dumps(config.redacted())}", flush=True)
    from relais.server.app import serve

    return serve(config)


def _check_files(config) -> None:
    """The tls and auth files: readable and consistent, checked before anything loads (the server reads
    them again at start, and again whenever they change)."""
    from relais.server.auth import TokenStore
    from relais.server.tls import CertificateFiles

    if config.tls.enabled:
        CertificateFiles(config.tls)
    if config.auth.enabled:
        TokenStore(config.auth)
