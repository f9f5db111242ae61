"""The web port without a browser: the page and capabilities over HTTP, and the Translate
WebSocket (docs/websocket.md) against the real engine: a whole stream, each protocol error
with its documented close code, a client that vanishes, admission shared with gRPC, a drain
that lets a stream finish, and every refused or abandoned stream giving its session back (relais_sessions_active, scraped
from the server's metrics port, returns to 0).

The same real engine as tests/test_server.py, on the prepared test model set.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import load_audio
from relais.server.app import build_server, start_in_process
from relais.server.config import ServerConfig, load_config
from relais.server.web import CLOSE_CODES, MAX_MESSAGE_BYTES, close_code_for
from relais.errors import InvalidRequest, ResourceExhausted, Unavailable
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
CONFIG = {"sourceLanguage": "fr", "targetLanguage": "en", "inputFormat": {"encoding": "PCM_S16LE", "sampleRateHz": 16000}}
END = json.dumps({"type": "end"})


# --- no server ---------------------------------------------------------------------------------

def test_web_port_is_off_unless_enabled():
    assert load_config(env={}).server.web_port == -1
    assert load_config(env={"RELAIS_SERVER_WEB_PORT": "8080"}).server.web_port == 8080
    with pytest.raises(ValueError, match=r"server.web_port: must be -1 \(off\) or 0..65535"):
        load_config(env={"RELAIS_SERVER_WEB_PORT": "-2"})


def test_close_codes_follow_the_grpc_status_codes():
    """4000 + the gRPC status code Translate would have ended with; 1003/1009 for frames."""
    assert close_code_for(InvalidRequest("x")) == 4000 + grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert close_code_for(ResourceExhausted("x")) == 4000 + grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert close_code_for(Unavailable("x")) == 4000 + grpc.StatusCode.UNAVAILABLE.value[0]
    assert close_code_for(RuntimeError("x")) == 4000 + grpc.StatusCode.INTERNAL.value[0]
    documented = (Path(__file__).resolve().parent.parent / "docs" / "websocket.md").read_text()
    for _, code in CLOSE_CODES:
        assert f"| {int(code)} |" in documented, code


# --- a live server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    return TranslationEngine(EngineConfig(models_dir=model_set.root))


def _config(model_set) -> ServerConfig:
    return ServerConfig().replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "web_port": 0,
                                          "max_sessions": 1},
                                  models={"dir": str(model_set.root)}, runtime={"providers": ["cpu"]})


@pytest.fixture(scope="module")
def web(model_set, engine):
    with start_in_process(_config(model_set), engine=engine) as handle:
        yield handle


@pytest.fixture(scope="module")
def pcm16k() -> bytes:
    audio = load_audio(SAMPLE_FR)
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()


def _url(handle, path: str) -> str:
    return f"http://127.0.0.1:{handle.server.web_port}{path}"


def _metrics(handle) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{handle.server.metrics_port}/metrics", timeout=10).read().decode()


def _value(text: str, series: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(series + " ")).split()[-1])


def _wait_sessions_freed(handle, until=lambda text: True, timeout_s: float = 30.0) -> str:
    """The metrics once relais_sessions_active is back to 0 and ``until(text)`` holds (the stream's
    outcome and error are counted just after its slot is freed); fails after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = _metrics(handle)
        done = _value(text, "relais_sessions_active") == 0 and until(text)
        if done or time.monotonic() > deadline:
            assert _value(text, "relais_sessions_active") == 0
            return text
        time.sleep(0.1)


async def _exchange(port: int, frames: list[str | bytes], *, chunk_pause_s: float = 0.0):
    """Send ``frames``, then read until the server closes: (messages, close code, close reason)."""
    messages: list[str | bytes] = []
    async with connect(f"ws://127.0.0.1:{port}/v1/translate", max_size=None) as ws:
        try:
            for frame in frames:
                await ws.send(frame)
                if chunk_pause_s:
                    await asyncio.sleep(chunk_pause_s)
        except ConnectionClosed:
            pass  # the server closed mid-send (an error): read what it said below
        try:
            async for message in ws:
                messages.append(message)
        except ConnectionClosed:
            pass
        return messages, ws.close_code, ws.close_reason


def _events(messages) -> list[dict]:
    return [json.loads(m) for m in messages if isinstance(m, str)]


def test_page_assets_and_capabilities_over_http(web):
    page = urllib.request.urlopen(_url(web, "/"), timeout=10)
    html = page.read().decode()
    assert page.headers["Content-Type"].startswith("text/html") and '<script type="module" src="app.js">' in html
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]  # nothing from outside the server
    for path, kind in (("/app.js", "text/javascript"), ("/capture-worklet.js", "text/javascript"),
                       ("/style.css", "text/css")):
        response = urllib.request.urlopen(_url(web, path), timeout=10)
        assert response.headers["Content-Type"].startswith(kind), path
        body = response.read()
        assert b"http://" not in body and b"https://" not in body, path  # no CDN, works offline
    caps = json.loads(urllib.request.urlopen(_url(web, "/v1/capabilities"), timeout=10).read())
    assert "fr" in caps["sourceLanguages"] and "en" in caps["targetLanguages"]
    for path, status in (("/nothing-here", 404), ("/v1/translate", 426)):  # a plain GET is not an upgrade
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(_url(web, path), timeout=10)
        assert err.value.code == status, path


def test_stream_carries_translate_semantics(web, pcm16k):
    """Config, binary audio, end -> started, captions, each audio header followed by its PCM, the
    summary, then a normal close; the session is counted as gRPC's are."""
    before = _value(_metrics(web), 'relais_sessions_total{outcome="ok"}')
    chunks = [pcm16k[i:i + 3200] for i in range(0, len(pcm16k), 3200)]  # 100 ms frames
    messages, code, reason = asyncio.run(_exchange(web.server.web_port, [json.dumps(CONFIG), *chunks, END]))
    assert (code, reason) == (1000, "end of stream")
    events = _events(messages)
    assert list(events[0]) == ["started"] and events[0]["started"]["task"] == "translate"
    assert events[0]["started"]["outputFormat"]["encoding"] == "PCM_S16LE"
    assert list(events[-1]) == ["summary"]
    summary = events[-1]["summary"]
    assert summary["audioInS"] == pytest.approx(len(pcm16k) / 2 / 16000, abs=0.01)
    assert "added" in summary["translation"].lower()
    finals = [e["text"]["text"] for e in events if e.get("text", {}).get("kind") == "TRANSLATION_FINAL"]
    assert " ".join(finals) == summary["translation"]
    # every audio header is followed by exactly its PCM, which the header no longer carries
    audio_bytes = 0
    for i, message in enumerate(messages):
        if isinstance(message, str) and "audio" in json.loads(message):
            header = json.loads(message)["audio"]
            assert "data" not in header and header["sampleRateHz"] == 22050 and "sourceSpan" in header
            assert isinstance(messages[i + 1], bytes) and len(messages[i + 1]) > 0
            audio_bytes += len(messages[i + 1])
    assert sum(isinstance(m, bytes) for m in messages) == sum("audio" in e for e in events)
    assert audio_bytes / 2 / 22050 == pytest.approx(summary["audioOutS"], abs=0.01)
    text = _wait_sessions_freed(web, until=lambda text: _value(text, 'relais_sessions_total{outcome="ok"}') > before)
    assert _value(text, 'relais_sessions_total{outcome="ok"}') == before + 1


@pytest.mark.parametrize("frames, code, grpc_code, message", [
    # bad first message: not JSON, not a StreamConfig, a StreamConfig gRPC refuses (same message)
    (["not json"], 4003, "INVALID_ARGUMENT", "the first message must be a StreamConfig as JSON"),
    (['{"sourceLanguage": "fr", "targetLang": "en"}'], 4003, "INVALID_ARGUMENT", 'no field named "targetLang"'),
    (['{"sourceLanguage": "fr", "inputFormat": {"encoding": "PCM_S16LE", "sampleRateHz": 16000}}'], 4003,
     "INVALID_ARGUMENT", "target_language is required"),
    (['{"targetLanguage": "en", "inputFormat": {"encoding": "PCM_S16LE", "sampleRateHz": 1000}}'], 4003,
     "INVALID_ARGUMENT", "sample rate 1000 Hz is outside 8000..192000"),
    # audio before the config
    ([b"\0\0" * 800], 1003, "INVALID_ARGUMENT", "send the StreamConfig first, as JSON in a text frame"),
    # wrong frame type: text where audio belongs
    ([json.dumps(CONFIG), b"\0\0" * 800, "some text"], 1003, "INVALID_ARGUMENT", "send audio in binary frames"),
    # oversize frame (the library closes with 1009 itself; no error frame can follow)
    ([json.dumps(CONFIG), b"\0" * (MAX_MESSAGE_BYTES + 2)], 1009, "INVALID_ARGUMENT", None),
    # audio the decoder refuses
    (['{"targetLanguage": "en", "inputFormat": {"encoding": "WAV"}}', b"ID3\x04not a wav file at all" * 4], 4003,
     "INVALID_ARGUMENT", "input is not a WAV file"),
])
def test_protocol_errors_close_with_the_documented_code(web, frames, code, grpc_code, message):
    errors = f'relais_errors_total{{code="{grpc_code}"}}'
    before = _metrics(web)
    before_errors = _value(before, errors) if errors + " " in before else 0.0
    messages, close_code, reason = asyncio.run(_exchange(web.server.web_port, frames))
    assert close_code == code, (reason, messages)
    if message is not None:
        error = _events(messages)[-1]["error"]
        assert error == {"code": grpc_code, "closeCode": code, "message": error["message"]}
        assert message in error["message"] and reason and error["message"].startswith(reason.rstrip("."))
    after = _wait_sessions_freed(web, until=lambda text: _value(text, errors) > before_errors)
    assert _value(after, errors) == before_errors + 1


def test_a_client_that_vanishes_frees_its_session(web, pcm16k):
    """The TCP connection dropped with no close frame (the server sees 1006): the session is
    dropped and counted as cancelled, not as an error."""
    before = _metrics(web)

    async def vanish():
        ws = await connect(f"ws://127.0.0.1:{web.server.web_port}/v1/translate")
        await ws.send(json.dumps(CONFIG))
        assert "started" in json.loads(await ws.recv())
        for i in range(0, 16000 * 2 * 2, 3200):
            await ws.send(pcm16k[i:i + 3200])
        await asyncio.sleep(0.5)
        assert _value(await asyncio.to_thread(_metrics, web), "relais_sessions_active") == 1
        ws.transport.abort()  # gone: no close frame, no FIN handshake

    asyncio.run(vanish())
    cancelled = 'relais_sessions_total{outcome="cancelled"}'
    after = _wait_sessions_freed(web, until=lambda text: _value(text, cancelled) > _value(before, cancelled))
    assert _value(after, cancelled) == _value(before, cancelled) + 1
    assert _value(after, 'relais_sessions_total{outcome="error"}') == _value(before, 'relais_sessions_total{outcome="error"}')


def test_admission_is_shared_with_grpc(web):
    """max_sessions=1 counts both ports: a WebSocket session makes gRPC's next stream
    RESOURCE_EXHAUSTED and the next WebSocket 4008."""
    port = web.server.web_port

    async def main():
        async with connect(f"ws://127.0.0.1:{port}/v1/translate") as ws:
            await ws.send(json.dumps(CONFIG))
            assert "started" in json.loads(await ws.recv())
            second = await _exchange(port, [json.dumps(CONFIG)])
            with grpc.insecure_channel(web.address) as channel:
                stub = pb_grpc.SpeechTranslatorStub(channel)
                config = pb.StreamConfig(source_language="fr", target_language="en",
                                         input_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000))
                with pytest.raises(grpc.RpcError) as err:
                    await asyncio.to_thread(lambda: list(stub.Translate(iter([pb.TranslateRequest(config=config)]))))
            await ws.send(END)
            async for _ in ws:
                pass
        return second, err.value

    second, grpc_error = asyncio.run(main())
    messages, code, reason = second
    assert code == 4008 and "server.max_sessions" in _events(messages)[-1]["error"]["message"]
    assert grpc_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _value(_wait_sessions_freed(web), 'relais_sessions_total{outcome="rejected"}') >= 2


def test_drain_lets_a_websocket_stream_finish(model_set, engine, pcm16k):
    """stop(grace): a new WebSocket gets 4014 at once, the one in flight runs to its summary and
    a normal close, and only then does the server stop (the web port with it)."""
    chunks = [pcm16k[i:i + 3200] for i in range(0, len(pcm16k), 3200)]
    half = len(chunks) // 2

    async def main():
        server = build_server(_config(model_set), engine=engine)
        await server.start()
        port = server.web_port
        try:
            async with connect(f"ws://127.0.0.1:{port}/v1/translate") as ws:
                await ws.send(json.dumps(CONFIG))
                assert "started" in json.loads(await ws.recv())
                for chunk in chunks[:half]:
                    await ws.send(chunk)
                stopping = asyncio.create_task(server.stop(grace=120))
                await asyncio.sleep(0.2)
                refused = await _exchange(port, [json.dumps(CONFIG)])
                during = (stopping.done(), server.gate.active)
                for chunk in chunks[half:]:
                    await ws.send(chunk)
                await ws.send(END)
                drained = [message async for message in ws]
                closed = (ws.close_code, ws.close_reason)
            await asyncio.wait_for(stopping, timeout=60)
        finally:
            await server.stop(0)
        return refused, during, drained, closed

    refused, during, drained, closed = asyncio.run(main())
    messages, code, _ = refused
    assert code == 4014 and "shutting down" in _events(messages)[-1]["error"]["message"]
    assert during == (False, 1)  # stop() was waiting on the stream, not cutting it
    assert closed == (1000, "end of stream")
    summary = _events(drained)[-1]["summary"]
    assert summary["audioInS"] == pytest.approx(len(pcm16k) / 2 / 16000, abs=0.01)
    assert "added" in summary["translation"].lower()
