"""The gRPC server: config, error mapping, metrics, life cycle, and the real engine behind it.

Tests without models use a tiny in-test servicer or a stub engine; the rest share one
module-scoped server on free ports with the real prepared model set (one engine load).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from relais.server.app import build_server, start_in_process
from relais.server.config import ServerConfig, load_config
from relais.server.interceptor import ErrorMappingInterceptor, ResourceExhausted, Unavailable
from relais.server.metrics import RelaisMetrics
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "data" / "samples" / "fr_fleurs_1857.wav"
LOCAL = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}


# --- config ------------------------------------------------------------------------------------

def test_config_defaults_file_then_env(tmp_path):
    path = tmp_path / "relais.yaml"
    path.write_text("server:\n  port: 6000\n  max_sessions: 3\nruntime:\n  providers: [cuda, cpu]\n")
    cfg = load_config(path, env={"RELAIS_SERVER_PORT": "7000", "RELAIS_MODELS_PRECISION": "int8",
                                 "RELAIS_EVAL_DIR": "/elsewhere", "HOME": "/root"})
    assert (cfg.server.port, cfg.server.max_sessions, cfg.server.metrics_port) == (7000, 3, 9090)
    assert cfg.runtime.providers == ("cuda", "cpu") and cfg.models.precision == "int8"
    assert load_config(env={"RELAIS_RUNTIME_PROVIDERS": "cpu"}).runtime.providers == ("cpu",)
    assert cfg.redacted()["runtime"]["providers"] == ["cuda", "cpu"]


@pytest.mark.parametrize("yaml_text, env, message", [
    ("server:\n  port: 70000\n", {}, r"server.port: must be 0..65535 \(0 picks a free port\), got 70000"),
    ("server:\n  prot: 1\n", {}, r"unknown key\(s\) \['server.prot'\]"),
    ("servr:\n  port: 1\n", {}, r"unknown section\(s\) \['servr'\]"),
    ("", {"RELAIS_SERVER_MAX_SESSIONS": "many"}, "server.max_sessions: must be an integer, got 'many'"),
    ("", {"RELAIS_SERVER_WORKERS": "2"}, r"environment: unknown key\(s\) \['server.workers'\]"),
    ("", {"RELAIS_RUNTIME_PROVIDERS": "gpu"}, r"runtime.providers: unknown provider\(s\) \['gpu'\]"),
    ("models:\n  precision: fp8\n", {}, "models.precision: must be one of"),
])
def test_config_errors_name_the_key(tmp_path, yaml_text, env, message):
    path = tmp_path / "relais.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_config(path, env=env)


# --- error mapping -----------------------------------------------------------------------------

def _raise_for(payload: bytes):
    errors = {b"value": ValueError("sample_rate_hz must be set"), b"full": ResourceExhausted("at the limit"),
              b"busy": Unavailable("warming up"), b"boom": RuntimeError("secret internals")}
    if payload in errors:
        raise errors[payload]
    return payload


async def _unary(request, context):
    return _raise_for(request)


async def _stream_gen(request_iterator, context):
    async for request in request_iterator:
        yield b"ok:" + request
        _raise_for(request)


async def _stream_coro(request_iterator, context):
    async for request in request_iterator:
        await context.write(b"ok:" + request)
        _raise_for(request)


def test_interceptor_maps_exceptions_to_status_codes():
    metrics = RelaisMetrics()

    async def main():
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor(
            on_error=lambda code: metrics.errors_total.labels(code=code).inc())])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Errors", {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Gen": grpc.stream_stream_rpc_method_handler(_stream_gen),
            "Coro": grpc.stream_stream_rpc_method_handler(_stream_coro)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        results = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for payload in (b"fine", b"value", b"full", b"busy", b"boom"):
                try:
                    results["Unary", payload] = ("OK", await channel.unary_unary("/test.Errors/Unary")(payload))
                except grpc.aio.AioRpcError as err:
                    results["Unary", payload] = (err.code().name, err.details())
            for method in ("Gen", "Coro"):
                call = channel.stream_stream(f"/test.Errors/{method}")(iter([b"value"]))
                got = []
                try:
                    async for response in call:
                        got.append(response)
                except grpc.aio.AioRpcError as err:
                    results[method] = (got, err.code().name, err.details())
        await server.stop(0)
        return results

    results = asyncio.run(main())
    assert results["Unary", b"fine"] == ("OK", b"fine")
    assert results["Unary", b"value"] == ("INVALID_ARGUMENT", "sample_rate_hz must be set")
    assert results["Unary", b"full"] == ("RESOURCE_EXHAUSTED", "at the limit")
    assert results["Unary", b"busy"] == ("UNAVAILABLE", "warming up")
    code, details = results["Unary", b"boom"]
    assert code == "INTERNAL" and details.startswith("internal error; see server logs, request id ")
    assert "secret" not in details
    for method in ("Gen", "Coro"):
        assert results[method] == ([b"ok:value"], "INVALID_ARGUMENT", "sample_rate_hz must be set")
    text = metrics.exposition().decode()
    assert 'relais_errors_total{code="INVALID_ARGUMENT"} 3.0' in text
    assert 'relais_errors_total{code="INTERNAL"} 1.0' in text


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_exposition_over_http():
    first, second = RelaisMetrics(), RelaisMetrics()  # own registries: no clash
    first.observe_stage("encoder", 0.02)
    first.set_execution_provider("cpu")
    port = first.start_http(0, "127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        first.stop_http()
    for name in ("relais_sessions_active", 'relais_sessions_total{outcome="rejected"}',
                 'relais_stage_latency_seconds_count{stage="encoder"} 1.0', "relais_first_audio_latency_seconds",
                 "relais_first_text_latency_seconds", "relais_output_lag_seconds", "relais_real_time_factor",
                 'relais_audio_seconds_total{direction="in"}', "relais_model_load_seconds",
                 'relais_execution_provider_info{provider="cpu"} 1.0'):
        assert name in text, name
    assert "relais_stage_latency_seconds_count" not in second.exposition().decode()


# --- life cycle with a stub engine (no models) ----------------------------------------------------

class _BlockingEngine:
    """Warms up only when told to: lets a test look at the server while it is warming."""

    def __init__(self):
        self.release = threading.Event()
        self.stage_observer = None

    def warm_up(self):
        assert self.release.wait(30)

    def capabilities(self):
        from types import SimpleNamespace

        return SimpleNamespace(source_languages=[], target_languages=[], voices=[], models=[],
                               execution_provider="cpu")


def test_warming_server_is_not_serving_and_refuses_streams():
    engine = _BlockingEngine()
    config = ServerConfig().replace(server=LOCAL)

    async def main():
        server = build_server(config, engine=engine)
        starting = asyncio.create_task(server.start())
        while server.port is None or server.metrics_port is None:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = (await health.Check(health_pb2.HealthCheckRequest(service="relais.v1.SpeechTranslator"))).status
            call = pb_grpc.SpeechTranslatorStub(channel).Translate(
                iter([pb.TranslateRequest(config=pb.StreamConfig(target_language="en"))]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
            engine.release.set()
            await starting
            after = (await health.Check(health_pb2.HealthCheckRequest())).status
        await server.stop(0)
        return before, err.value, after, server.metrics.exposition().decode()

    before, err, after, text = asyncio.run(main())
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in err.details()
    assert after == health_pb2.HealthCheckResponse.SERVING
    assert 'relais_sessions_total{outcome="rejected"} 1.0' in text
    assert 'relais_execution_provider_info{provider="cpu"} 1.0' in text
