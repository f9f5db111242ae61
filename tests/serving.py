"""`relais serve` as a real subprocess, for the tests that need one (lifecycle, live metrics)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def relais_argv() -> list[str]:
    script = Path(sys.executable).parent / "relais"
    return [str(script)] if script.exists() else [sys.executable, "-m", "relais.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(channel: grpc.Channel, timeout: float = 2.0) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout).status


@dataclass
class Served:
    proc: subprocess.Popen
    channel: grpc.Channel
    port: int
    metrics_port: int
    log: Path


@contextlib.contextmanager
def relais_serve(models_dir: Path, workdir: Path, server_yaml: str = "", ready_s: float = 180.0,
                 env: dict[str, str] | None = None) -> Iterator[Served]:
    """Start `relais serve` on free loopback ports with ``server_yaml`` added to the server section
    (and ``env`` added to its environment); yield once health reports SERVING; kill it at the end if
    it is still running."""
    port, metrics_port = free_port(), free_port()
    config = workdir / "relais.yaml"
    config.write_text(f"server:\n  host: 127.0.0.1\n  port: {port}\n  metrics_port: {metrics_port}\n"
                      + "".join(f"  {line}\n" for line in server_yaml.splitlines() if line.strip())
                      + "runtime:\n  providers: [cpu]\n")
    log = workdir / "serve.log"
    env = {**os.environ, "RELAIS_MODELS_DIR": str(models_dir), "RELAIS_MODELS_PRECISION": "auto", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*relais_argv(), "serve", "--config", str(config)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, f"relais serve exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not SERVING after {ready_s:.0f} s:\n{log.read_text()[-3000:]}"
            try:
                if health(channel, timeout=1.0) == SERVING:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        yield Served(proc, channel, port, metrics_port, log)
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
