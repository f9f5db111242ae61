"""The gRPC server: config, error mapping, metrics, life cycle, and the real engine behind it.

Config, error-mapping and metrics tests need no models (the interceptor is exercised with a
tiny in-test generic handler). Everything else runs the real TranslationEngine on the
prepared model set: one module-scoped engine is shared by the servers (start-up, event
mapping, drain, the live server), except the start-up test, which lets the server load its
own engine so that the warming phase can be observed.
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

from conftest import load_audio, load_manifest
from relais.server.app import build_server, start_in_process
from relais.server.config import ServerConfig, load_config
from relais.models.manifest import ManifestError
from relais.server.interceptor import ErrorMappingInterceptor, InvalidRequest, ResourceExhausted, Unavailable
from relais.server.metrics import RelaisMetrics
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
LOCAL = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}
PCM16K = pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000)


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
    ("", {"RELAIS_RUNTIME_HEAP_TRIM_S": "-1"}, r"runtime.heap_trim_s: must be >= 0 seconds \(0 = off\), got -1.0"),
    ("", {"RELAIS_RUNTIME_VOICE_PROVIDERS": "gpu"}, r"runtime.voice_providers: unknown provider\(s\) \['gpu'\]"),
    ("runtime: {voice_providers: []}\n", {}, r"runtime.voice_providers: must name at least one provider"),
    ("", {"RELAIS_RUNTIME_CUDNN_CONV_ALGO_SEARCH": "fastest"},
     r"runtime.cudnn_conv_algo_search: must be one of \['heuristic', 'exhaustive', 'default'\], got 'fastest'"),
])
def test_config_errors_name_the_key(tmp_path, yaml_text, env, message):
    path = tmp_path / "relais.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError, match=message):
        load_config(path, env=env)


def test_config_rules_are_defined_once():
    """The server config, the engine and the runtime give the same answer (one definition each)."""
    from relais.pipeline.engine import EngineConfig
    from relais.runtime.ort import RuntimeConfig

    messages = []
    for build in (lambda: load_config(env={"RELAIS_MODELS_PRECISION": "fp8"}),
                  lambda: EngineConfig(precision="fp8")):
        with pytest.raises(ValueError) as err:
            build()
        messages.append(str(err.value))
    assert messages[0] == messages[1] == "models.precision: must be one of ['auto', 'fp32', 'fp16', 'int8'], got 'fp8'"
    for env, kwargs in (({"RELAIS_RUNTIME_PROVIDERS": "gpu"}, {"providers": ("gpu",)}),
                        ({"RELAIS_RUNTIME_INTRA_OP_THREADS": "-1"}, {"intra_op_threads": -1})):
        with pytest.raises(ValueError) as from_config:
            load_config(env=env)
        with pytest.raises(ValueError) as from_runtime:
            RuntimeConfig(**kwargs)
        assert str(from_config.value) == str(from_runtime.value)



def test_gpu_runtime_settings_reach_the_providers():
    """What the CUDA provider is given (cuDNN's algorithm search: heuristic unless configured) and
    which providers the voice gets (the CPU unless runtime.voice_providers says otherwise)."""
    from relais.runtime.ort import _provider_options

    for env, expected in (({}, "HEURISTIC"), ({"RELAIS_RUNTIME_CUDNN_CONV_ALGO_SEARCH": "exhaustive"}, "EXHAUSTIVE")):
        config = load_config(env=env)
        options = _provider_options("cuda", config.runtime.runtime_config())
        assert options == {"device_id": 0, "cudnn_conv_algo_search": expected}
    assert load_config(env={}).engine_config().voice_providers == ("cpu",)
    engine = load_config(env={"RELAIS_RUNTIME_VOICE_PROVIDERS": "cuda,cpu"}).engine_config()
    assert engine.voice_providers == ("cuda", "cpu") and engine.runtime.providers == ("tensorrt", "cuda", "cpu")


def test_the_voice_runs_on_its_own_providers(model_set):
    """The engine opens the voice with runtime.voice_providers, not the models' chain: a provider
    this host lacks, named for the voice alone, fails the voice (and says which provider)."""
    from relais.pipeline.engine import EngineConfig, TranslationEngine
    import onnxruntime as ort

    from relais.runtime.ort import RuntimeConfig

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has TensorRT: the voice would load")
    with pytest.raises(RuntimeError, match=r"none of the configured providers \['tensorrt'\] is available"):
        TranslationEngine(EngineConfig(models_dir=model_set.root, runtime=RuntimeConfig(providers=("cpu",)),
                                       voice_providers=("tensorrt",)))


def test_cpu_memory_arena_is_off_unless_configured(tmp_path):
    """ONNX Runtime's CPU arena never gives memory back, so a long stream's RSS crept up with it;
    the sessions are created without it unless runtime.cpu_mem_arena turns it back on."""
    from test_faults import _tiny_add_model

    from relais.runtime.ort import create_session

    model = _tiny_add_model(tmp_path / "tiny_add.onnx")
    for env, expected in (({}, False), ({"RELAIS_RUNTIME_CPU_MEM_ARENA": "true"}, True)):
        runtime = load_config(env={"RELAIS_RUNTIME_PROVIDERS": "cpu", **env}).runtime.runtime_config()
        loaded = create_session(model, runtime)
        assert loaded.session.get_session_options().enable_cpu_mem_arena is expected
        assert loaded.session.run(None, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})[0].tolist() == [2, 2]


def test_heap_trim_gives_freed_pages_back():
    """200 MB of small C blocks freed under a live one stay resident (glibc only returns the top of
    its heap); the server's trimmer hands them back to the OS."""
    import ctypes
    import ctypes.util

    from relais.runtime.heap import heap_trimmer

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def rss_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

    size = 64 * 1024  # under glibc's mmap threshold: these come from the heap
    blocks = [libc.malloc(size) for _ in range(3200)]
    pin = libc.malloc(size)  # a live block above them, so free() alone cannot shrink the heap
    for block in (*blocks, pin):
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    held = rss_mb()
    trim = heap_trimmer()
    assert trim is not None  # Linux with glibc, as in the image
    assert trim() >= 0
    released = held - rss_mb()
    libc.free(pin)
    assert released > 150, f"only {released:.0f} MB of ~200 MB freed went back to the OS"


# --- error mapping -----------------------------------------------------------------------------

def _raise_for(payload: bytes):
    errors = {b"value": InvalidRequest("sample_rate_hz must be set"), b"full": ResourceExhausted("at the limit"),
              b"busy": Unavailable("warming up"), b"boom": RuntimeError("secret internals"),
              b"plain": ValueError("secret shape (3, 2) != (2, 3)"),
              b"manifest": ManifestError("secret /srv/models/manifest.json is broken")}
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


def test_interceptor_maps_exceptions_to_status_codes(caplog):
    """Only InvalidRequest is the client's fault; a plain ValueError or a ManifestError is INTERNAL,
    with a request id that finds the traceback in the log and no internal text in the message."""
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
            for payload in (b"fine", b"value", b"full", b"busy", b"boom", b"plain", b"manifest"):
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

    with caplog.at_level("ERROR", logger="relais.server.interceptor"):
        results = asyncio.run(main())
    assert results["Unary", b"fine"] == ("OK", b"fine")
    assert results["Unary", b"value"] == ("INVALID_ARGUMENT", "sample_rate_hz must be set")
    assert results["Unary", b"full"] == ("RESOURCE_EXHAUSTED", "at the limit")
    assert results["Unary", b"busy"] == ("UNAVAILABLE", "warming up")
    for payload in (b"boom", b"plain", b"manifest"):
        code, details = results["Unary", payload]
        assert code == "INTERNAL" and details.startswith("internal error; see server logs, request id ")
        assert "secret" not in details
        request_id = details.rsplit(" ", 1)[-1]
        logged = [r for r in caplog.records if request_id in r.getMessage()]
        assert len(logged) == 1 and "secret" in str(logged[0].exc_info[1])
    for method in ("Gen", "Coro"):
        assert results[method] == ([b"ok:value"], "INVALID_ARGUMENT", "sample_rate_hz must be set")
    text = metrics.exposition().decode()
    assert 'relais_errors_total{code="INVALID_ARGUMENT"} 3.0' in text
    assert 'relais_errors_total{code="INTERNAL"} 3.0' in text


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


# --- the real engine (prepared model set, one load for the module) -------------------------------

CLIP_ID = "fleurs_fr_test_1857"  # 8.3 s of French (fr_en_dev)
VOICE = "en_US-joe-medium"


@pytest.fixture(scope="module")
def engine(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    return TranslationEngine(EngineConfig(models_dir=model_set.root))


def test_engine_picks_each_whisper_graphs_precision(engine, model_set):
    """auto on CPU: int8 for both graphs; the encoder's can be named apart (fp32 is faster on CPUs without
    VNNI, docs/benchmarks.md), and a graph that was not exported is refused with the command that exports it."""
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    assert engine.whisper.encoder.path.endswith("encoder.int8.onnx")
    assert engine.whisper.decoder.path.endswith("decoder.int8.onnx")
    assert engine.whisper.precision_label == "int8"
    mixed = TranslationEngine(EngineConfig(models_dir=model_set.root, encoder_precision="fp32"))
    assert mixed.whisper.encoder.path.endswith("encoder.fp32.onnx") and mixed.whisper.decoder.path.endswith("decoder.int8.onnx")
    assert mixed.whisper.precision_label == "fp32 encoder + int8 decoder"
    fp32 = TranslationEngine(EngineConfig(models_dir=model_set.root, precision="fp32"))
    assert fp32.whisper.encoder.path.endswith("encoder.fp32.onnx") and fp32.whisper.precision_label == "fp32"
    with pytest.raises(ValueError, match=r"encoder_precision 'fp16' was not exported for this model; have "
                                         r"\['fp32', 'int8'\] \(re-run `relais models prepare --precision fp16`\)"):
        TranslationEngine(EngineConfig(models_dir=model_set.root, encoder_precision="fp16"))
    with pytest.raises(ValueError, match="models.encoder_precision: must be one of"):
        load_config(env={"RELAIS_MODELS_ENCODER_PRECISION": "fp8"})
    assert load_config(env={"RELAIS_MODELS_ENCODER_PRECISION": "int8"}).engine_config().encoder_precision == "int8"


@pytest.fixture(scope="module")
def clip():
    """(utterance, 16 kHz float32 samples) of the French evaluation clip the server tests stream."""
    utt = next(u for u in load_manifest("fr_en_dev") if u.id == CLIP_ID)
    return utt, load_audio(utt.path)


def _server_config(model_set, **server) -> ServerConfig:
    return ServerConfig().replace(server={**LOCAL, **server}, models={"dir": str(model_set.root)},
                                  runtime={"providers": ["cpu"]})


def _stream_config(**fields) -> pb.StreamConfig:
    return pb.StreamConfig(source_language="fr", target_language="en", input_format=PCM16K, **fields)


def _pcm_chunks(audio: np.ndarray, chunk_s: float = 0.5) -> list[bytes]:
    pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
    step = int(16000 * chunk_s)
    return [pcm[i:i + step].tobytes() for i in range(0, len(pcm), step)]


def _requests(audio: np.ndarray, **fields):
    yield pb.TranslateRequest(config=_stream_config(**fields))
    for data in _pcm_chunks(audio):
        yield pb.TranslateRequest(audio=pb.AudioChunk(data=data))


async def _health(channel, service: str = "") -> int:
    return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))).status


def test_server_loading_its_engine_is_not_serving_until_warm(model_set):
    """No engine given: start() binds, reports NOT_SERVING, loads the real models in a thread, then SERVING."""
    config = _server_config(model_set)

    async def main():
        server = build_server(config)  # loads its own TranslationEngine from model_set.root
        starting = asyncio.create_task(server.start())
        try:
            return await exercise(server, starting)
        finally:
            await server.stop(0)

    async def exercise(server, starting):
        # metrics_port is set right before the engine load is handed to a thread (app.py, start())
        while server.metrics_port is None and not starting.done():
            await asyncio.sleep(0.005)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            before = await _health(channel, "relais.v1.SpeechTranslator")
            call = pb_grpc.SpeechTranslatorStub(channel).Translate(iter([pb.TranslateRequest(config=_stream_config())]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            with pytest.raises(grpc.aio.AioRpcError) as caps_refused:
                await pb_grpc.SpeechTranslatorStub(channel).ListCapabilities(pb.ListCapabilitiesRequest())
            # Both answers came while the load was still running: otherwise this test proved nothing.
            still_loading = (not starting.done(), server.gate.phase, server.engine)
            await asyncio.wait_for(starting, timeout=300)
            after = await _health(channel)
            caps = await pb_grpc.SpeechTranslatorStub(channel).ListCapabilities(pb.ListCapabilitiesRequest())
        return before, refused.value, caps_refused.value, still_loading, after, caps, server

    before, refused, caps_refused, still_loading, after, caps, server = asyncio.run(main())
    assert still_loading == (True, "warming", None)
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.code() == grpc.StatusCode.UNAVAILABLE and "warming up" in refused.details()
    assert caps_refused.code() == grpc.StatusCode.UNAVAILABLE
    assert after == health_pb2.HealthCheckResponse.SERVING
    assert caps.execution_provider == "cpu" and VOICE in {v.name for v in caps.voices}
    assert type(server.engine).__name__ == "TranslationEngine"
    text = server.metrics.exposition().decode()
    assert 'relais_sessions_total{outcome="rejected"} 1.0' in text
    assert 'relais_execution_provider_info{provider="cpu"} 1.0' in text
    assert _metric(text, "relais_model_load_seconds") > 0


def test_real_session_events_map_to_responses(model_set, engine, clip):
    utt, audio = clip
    f32_44k = pb.AudioFormat(encoding=pb.PCM_F32LE, sample_rate_hz=44100)

    async def main():
        config = _server_config(model_set).replace(runtime={"heap_trim_s": 0.5})
        server = build_server(config, engine=engine)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.SpeechTranslatorStub(channel)
                full = [r async for r in stub.Translate(_requests(audio, output_format=f32_44k), timeout=300)]
                no_text = [r async for r in stub.Translate(_requests(audio, return_text=False), timeout=300)]
                no_audio = [r async for r in stub.Translate(_requests(audio, return_audio=False), timeout=300)]
            return full, no_text, no_audio, server.metrics.exposition().decode()
        finally:
            await server.stop(0)

    full, no_text, no_audio, text = asyncio.run(main())

    kinds = [r.WhichOneof("event") for r in full]
    assert kinds[0] == "started" and kinds[-1] == "summary"
    assert kinds.count("started") == 1 and kinds.count("summary") == 1
    started = full[0].started
    assert (started.task, started.source_language, started.target_language, started.voice) == \
        ("translate", "fr", "en", VOICE)
    assert (started.output_format.encoding, started.output_format.sample_rate_hz) == (pb.PCM_F32LE, 44100)
    assert started.execution_provider == "cpu" and "whisper-base" in started.models

    # text: final translation pieces, emitted in order, that add up to the summary's translation
    texts = [r.text for r in full if r.HasField("text")]
    finals = [t for t in texts if t.kind == pb.TextEvent.TRANSLATION_FINAL]
    assert finals and all(t.language == "en" and t.text.strip() for t in finals)
    emitted = [r.text.emitted if r.HasField("text") else r.audio.emitted
               for r in full if r.HasField("text") or r.HasField("audio")]
    walls = [e.wall_s for e in emitted]
    assert walls == sorted(walls) and walls[0] >= 0
    # committed text is sent before its speech is synthesised, not with it
    first_audio = next(r for r in full if r.HasField("audio"))
    assert finals[0].emitted.wall_s < first_audio.audio.emitted.wall_s
    received = [e.source_received_s for e in emitted]
    assert received == sorted(received) and received[-1] <= utt.duration_s + 0.01
    assert all(0 <= t.source_span.start_s <= t.source_span.end_s <= utt.duration_s + 0.01 for t in finals)
    summary = full[-1].summary
    assert " ".join(t.text.strip() for t in finals).replace(" ", "") == summary.translation.replace(" ", "")
    assert "added" in summary.translation.lower()

    # audio: float32 at 44.1 kHz, phrases laid end to end in the output stream
    audio_out = [r.audio for r in full if r.HasField("audio")]
    assert audio_out and all(a.sample_rate_hz == 44100 and len(a.data) % 4 == 0 and a.data for a in audio_out)
    assert audio_out[0].output_start_s == 0.0
    for a, b in zip(audio_out, audio_out[1:]):
        assert b.output_start_s * 44100 == pytest.approx(a.output_start_s * 44100 + len(a.data) / 4, abs=0.5)
    samples = np.concatenate([np.frombuffer(a.data, "<f4") for a in audio_out])
    assert np.isfinite(samples).all() and np.abs(samples).max() <= 1.5
    assert float(np.sqrt(np.mean(samples ** 2))) > 0.01  # speech, not silence
    assert " ".join(a.text for a in audio_out).split() == summary.translation.split()  # every word spoken
    assert summary.audio_out_s == pytest.approx(len(samples) / 44100, abs=0.01)

    assert summary.audio_in_s == pytest.approx(utt.duration_s, abs=0.01)
    assert summary.first_audio_latency_s >= summary.first_text_latency_s > 0
    assert summary.real_time_factor > 0 and summary.detected_language in ("", "fr")

    # return_text=False: no TextEvents, yet the translation was made (spoken, and in the summary)
    assert not any(r.HasField("text") for r in no_text)
    assert any(r.HasField("audio") for r in no_text) and no_text[-1].summary.translation.strip()
    assert no_text[0].started.output_format.sample_rate_hz == 22050  # the voice's own rate by default
    # return_audio=False: no AudioOut, text as usual
    assert not any(r.HasField("audio") for r in no_audio)
    assert any(r.HasField("text") and r.text.kind == pb.TextEvent.TRANSLATION_FINAL for r in no_audio)
    assert no_audio[-1].summary.translation.strip() and no_audio[-1].summary.audio_out_s == 0

    assert 'relais_sessions_total{outcome="ok"} 3.0' in text and "relais_sessions_active 0.0" in text
    assert _metric(text, "relais_heap_trim_seconds_count") >= 1  # runtime.heap_trim_s ran while streams did
    assert _metric(text, 'relais_audio_seconds_total{direction="in"}') == pytest.approx(3 * utt.duration_s, abs=0.05)


def test_drain_lets_an_in_flight_stream_finish(model_set, engine, clip):
    utt, audio = clip
    chunks = _pcm_chunks(audio)
    half = len(chunks) // 2

    async def main():
        server = build_server(_server_config(model_set), engine=engine)
        await server.start()
        try:
            return await exercise(server)
        finally:
            await server.stop(0)

    async def exercise(server):
        release = asyncio.Event()

        async def held_requests():  # half the clip, then wait until the drain has begun, then the rest
            yield pb.TranslateRequest(config=_stream_config())
            for data in chunks[:half]:
                yield pb.TranslateRequest(audio=pb.AudioChunk(data=data))
            await release.wait()
            for data in chunks[half:]:
                yield pb.TranslateRequest(audio=pb.AudioChunk(data=data))

        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.SpeechTranslatorStub(channel)
            in_flight = stub.Translate(held_requests(), timeout=300)
            assert (await in_flight.read()).HasField("started")
            assert server.gate.active == 1
            stopping = asyncio.create_task(server.stop(grace=120))
            deadline = time.monotonic() + 10
            health = await _health(channel)
            while health != health_pb2.HealthCheckResponse.NOT_SERVING and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                health = await _health(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                [r async for r in stub.Translate(iter([pb.TranslateRequest(config=_stream_config())]))]
            during = (stopping.done(), server.gate.active)
            release.set()
            drained = []
            while (response := await in_flight.read()) is not grpc.aio.EOF:
                drained.append(response)
            status = await in_flight.code()
            await asyncio.wait_for(stopping, timeout=60)
        return health, refused.value, during, drained, status, server.metrics.exposition().decode()

    health, refused, during, drained, status, text = asyncio.run(main())
    assert health == health_pb2.HealthCheckResponse.NOT_SERVING
    assert refused.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in refused.details()
    assert during == (False, 1)  # stop() was waiting on the stream, not cutting it
    assert status == grpc.StatusCode.OK
    summary = drained[-1].summary
    assert drained[-1].HasField("summary") and summary.audio_in_s == pytest.approx(utt.duration_s, abs=0.01)
    assert "added" in summary.translation.lower() and any(r.HasField("audio") for r in drained)
    assert 'relais_sessions_total{outcome="ok"} 1.0' in text
    assert 'relais_sessions_total{outcome="rejected"} 1.0' in text


@pytest.fixture(scope="module")
def live(model_set, engine):
    handle = start_in_process(_server_config(model_set, max_sessions=1), engine=engine)
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
    (pb.StreamConfig(target_language="en", input_format=PCM16K, output_format=pb.AudioFormat(channels=2)),
     "output is mono"),
])
def test_live_bad_config_is_invalid_argument(live, first, message):
    _, _, stub = live
    is_config = isinstance(first, pb.StreamConfig)
    request = pb.TranslateRequest(config=first) if is_config else pb.TranslateRequest(audio=first)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Translate(iter([request])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


@pytest.mark.parametrize("audio, message", [
    (b"ID3\x04not a wav file at all" * 4, "input is not a WAV file (no RIFF/WAVE header)"),
    (b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0\x02\0\x18\0data\0\0\0\0",
     "WAV: 24-bit"),
])
def test_live_bad_audio_mid_stream_is_invalid_argument(live, audio, message):
    """Errors from the audio decoder (raised after the stream started) reach the client as
    INVALID_ARGUMENT with the decoder's message, not as INTERNAL."""
    _, _, stub = live
    requests = [pb.TranslateRequest(config=pb.StreamConfig(target_language="en",
                                                           input_format=pb.AudioFormat(encoding=pb.WAV))),
                pb.TranslateRequest(audio=pb.AudioChunk(data=audio))]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Translate(iter(requests), timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
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
