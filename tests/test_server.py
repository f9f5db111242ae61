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
        try:
            return await exercise(server, starting)
        finally:
            engine.release.set()
            await server.stop(0)

    async def exercise(server, starting):
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
        return before, err.value, after, server.metrics.exposition().decode()

    before, err, after, text = asyncio.run(main())
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in err.details()
    assert after == health_pb2.HealthCheckResponse.SERVING
    assert 'relais_sessions_total{outcome="rejected"} 1.0' in text
    assert 'relais_execution_provider_info{provider="cpu"} 1.0' in text


# --- servicer mapping and drain with a fake engine (no models) -----------------------------------

class _FakeSession:
    """Echoes: one final translation per push, one spoken phrase at the end."""

    def __init__(self, cfg, gate: threading.Event | None):
        from relais.pipeline.events import SessionStats

        self.cfg, self.stats, self.gate, self.received_s = cfg, SessionStats(), gate, 0.0

    def push_audio(self, audio):
        from relais.pipeline.events import TextKind, TextSegment

        if self.gate is not None:
            assert self.gate.wait(30)
        start, self.received_s = self.received_s, self.received_s + len(audio) / 16000
        self.stats.audio_in_s = self.received_s
        self.stats.speech_onset_s = 0.0
        self.stats.translation += "hello "
        return [TextSegment(TextKind.TRANSLATION_FINAL, "hello", "en", start, self.received_s, self.received_s)]

    def finish(self):
        from relais.pipeline.events import SpeechSegment

        self.stats.audio_out_s = 0.5
        return [SpeechSegment(np.full(11025, 0.25, np.float32), 22050, "hello", 0.0, self.received_s,
                              self.received_s)]


class _FakeEngine(_BlockingEngine):
    def __init__(self):
        super().__init__()
        self.release.set()
        self.push_gate: threading.Event | None = None

    def session_config(self, *, source_language, target_language, voice, latency_mode, return_text, return_audio):
        from types import SimpleNamespace

        if target_language != "en":
            raise ValueError(f"target_language {target_language!r} is not supported")
        return SimpleNamespace(source_language=None, target_language="en", task="translate", voice="fake",
                               voice_sample_rate_hz=22050)

    def new_session(self, cfg):
        return _FakeSession(cfg, self.push_gate)


def _pcm_requests(seconds: float, chunks: int, **config):
    yield pb.TranslateRequest(config=pb.StreamConfig(
        target_language="en", input_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000), **config))
    for _ in range(chunks):
        yield pb.TranslateRequest(audio=pb.AudioChunk(data=bytes(int(32000 * seconds / chunks))))


def test_fake_session_events_map_to_responses_and_drain_lets_streams_finish():
    engine = _FakeEngine()

    async def main():
        server = build_server(ServerConfig().replace(server=LOCAL), engine=engine)
        await server.start()
        try:
            return await exercise(server)
        finally:
            await server.stop(0)

    async def exercise(server):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SpeechTranslatorStub(channel)
            plain = [r async for r in stub.Translate(_pcm_requests(1.0, 2, output_format=pb.AudioFormat(
                encoding=pb.PCM_F32LE, sample_rate_hz=44100)))]
            no_text = [r async for r in stub.Translate(_pcm_requests(0.5, 1, return_text=False))]
            engine.push_gate = threading.Event()  # the next stream blocks inside push_audio
            in_flight = stub.Translate(_pcm_requests(0.5, 1))
            assert (await in_flight.read()).HasField("started")
            while not server.gate.active:
                await asyncio.sleep(0.01)
            stopping = asyncio.create_task(server.stop(grace=20))
            while server.gate.phase != "draining":
                await asyncio.sleep(0.01)
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [r async for r in stub.Translate(_pcm_requests(0.1, 0))]  # config only: no send races
            engine.push_gate.set()
            drained = []
            while (response := await in_flight.read()) is not grpc.aio.EOF:
                drained.append(response)
            await stopping
        return plain, no_text, health.status, refused.value, drained, server.metrics.exposition().decode()

    plain, no_text, health, refused, drained, text = asyncio.run(main())
    kinds = [r.WhichOneof("event") for r in plain]
    assert kinds[0] == "started" and kinds[-1] == "summary" and kinds.count("audio") == 1
    started = plain[0].started
    assert (started.task, started.voice, started.output_format.sample_rate_hz) == ("translate", "fake", 44100)
    audio = next(r.audio for r in plain if r.HasField("audio"))
    assert audio.sample_rate_hz == 44100 and abs(len(audio.data) / 4 - 22050) <= 2
    np.testing.assert_allclose(np.frombuffer(audio.data, "<f4")[1000:2000], 0.25, atol=0.01)
    texts = [r.text for r in plain if r.HasField("text")]
    assert texts and all(t.kind == pb.TextEvent.TRANSLATION_FINAL and t.emitted.wall_s >= 0 for t in texts)
    summary = plain[-1].summary
    assert summary.audio_in_s == pytest.approx(1.0) and summary.translation.startswith("hello")
    assert summary.first_audio_latency_s >= summary.first_text_latency_s >= 0
    assert not any(r.HasField("text") for r in no_text) and no_text[-1].HasField("summary")
    assert health == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details()
    assert drained[-1].HasField("summary")
    assert 'relais_sessions_total{outcome="ok"} 3.0' in text and "relais_sessions_active 0.0" in text
    assert 'relais_audio_seconds_total{direction="in"} 2.0' in text


# --- the real engine (prepared model set, one load for the module) -------------------------------

@pytest.fixture(scope="module")
def live(model_set):
    pytest.importorskip("relais.pipeline.engine")
    config = ServerConfig().replace(server={**LOCAL, "max_sessions": 1}, models={"dir": str(model_set.root)},
                                    runtime={"providers": ["cpu"]})
    handle = start_in_process(config)
    channel = grpc.insecure_channel(handle.address)
    yield handle, channel, pb_grpc.SpeechTranslatorStub(channel)
    channel.close()
    handle.close()


def _scrape(handle) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{handle.server.metrics_port}/metrics", timeout=10).read().decode()


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_live_health_reflection_and_capabilities(live):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    handle, channel, stub = live
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="relais.v1.SpeechTranslator"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"relais.v1.SpeechTranslator", "grpc.health.v1.Health"} <= services
    caps = stub.ListCapabilities(pb.ListCapabilitiesRequest())
    assert "fr" in caps.source_languages and "en" in caps.target_languages
    assert caps.voices and caps.execution_provider == "cpu" and {m.name for m in caps.models} >= {"whisper-base"}
    assert _metric(_scrape(handle), "relais_model_load_seconds") > 0


PCM16K = pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000)


@pytest.mark.parametrize("first, message", [
    (pb.StreamConfig(source_language="fr", input_format=PCM16K), "target_language is required"),
    (pb.StreamConfig(target_language="xx", input_format=PCM16K), "target_language 'xx' is not supported"),
    (pb.StreamConfig(source_language="xx", target_language="en", input_format=PCM16K),
     "source_language 'xx' is not supported"),
    (pb.AudioChunk(data=b"\0\0"), "the first request must carry a StreamConfig"),
    (pb.StreamConfig(target_language="en", input_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=1000)),
     "sample rate 1000 Hz is outside 8000..192000"),
    (pb.StreamConfig(target_language="en", input_format=pb.AudioFormat(encoding=pb.PCM_F32LE)),
     "input_format.sample_rate_hz is required for PCM_F32LE"),
    (pb.StreamConfig(target_language="en", voice="nobody", input_format=PCM16K), "voice 'nobody' not found"),
])
def test_live_bad_config_is_invalid_argument(live, first, message):
    _, _, stub = live
    is_config = isinstance(first, pb.StreamConfig)
    request = pb.TranslateRequest(config=first) if is_config else pb.TranslateRequest(audio=first)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Translate(iter([request])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_live_translates_french_speech(live):
    handle, _, stub = live
    data = SAMPLE_FR.read_bytes()
    before = _scrape(handle)

    def requests():
        yield pb.TranslateRequest(config=pb.StreamConfig(
            source_language="fr", target_language="en", input_format=pb.AudioFormat(encoding=pb.WAV),
            output_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000), client_id="test"))
        for i in range(0, len(data), 12345):  # odd-sized chunks, header split
            yield pb.TranslateRequest(audio=pb.AudioChunk(data=data[i:i + 12345]))

    responses = list(stub.Translate(requests(), timeout=120))
    started, summary = responses[0].started, responses[-1].summary
    assert (started.task, started.target_language, started.output_format.sample_rate_hz) == ("translate", "en", 16000)
    audio = [r.audio for r in responses if r.HasField("audio")]
    assert audio and all(a.sample_rate_hz == 16000 and len(a.data) % 2 == 0 for a in audio)
    assert audio[-1].output_start_s > 0
    finals = "".join(r.text.text for r in responses if r.HasField("text")
                     and r.text.kind == pb.TextEvent.TRANSLATION_FINAL)
    assert len(summary.translation.split()) >= 5
    assert finals.replace(" ", "") == summary.translation.replace(" ", "")  # the finals add up to the translation
    info = sf.info(io.BytesIO(data))
    assert summary.audio_in_s == pytest.approx(info.duration, abs=0.05)
    assert summary.first_text_latency_s > 0 and summary.real_time_factor > 0 and summary.audio_out_s > 0
    after = _scrape(handle)
    ok = 'relais_sessions_total{outcome="ok"}'
    assert _metric(after, ok) == _metric(before, ok) + 1
    assert _metric(after, 'relais_audio_seconds_total{direction="out"}') > 0


def test_live_second_stream_refused_and_disconnect_frees_the_slot(live):
    handle, _, stub = live
    hold = threading.Event()

    def held_requests():
        yield pb.TranslateRequest(config=pb.StreamConfig(target_language="en", input_format=PCM16K))
        yield pb.TranslateRequest(audio=pb.AudioChunk(data=bytes(32000)))
        hold.wait(60)  # keep the stream open until the test hangs up

    first = stub.Translate(held_requests())
    try:
        assert next(first).HasField("started")
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Translate(iter([pb.TranslateRequest(config=pb.StreamConfig(
                target_language="en", input_format=PCM16K))])))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sessions" in err.value.details()
    finally:
        first.cancel()  # the client goes away mid-stream
        hold.set()
    deadline = time.monotonic() + 20
    while _metric(_scrape(handle), "relais_sessions_active") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    text = _scrape(handle)
    assert _metric(text, "relais_sessions_active") == 0
    assert _metric(text, 'relais_sessions_total{outcome="cancelled"}') >= 1
    assert _metric(text, 'relais_sessions_total{outcome="rejected"}') >= 1
