"""Limits with the right status (issue 15): max_session_s and the idle timeout end a stream with
DEADLINE_EXCEEDED (close code 4004 on the WebSocket) and free its slot, an oversize message gets
gRPC's RESOURCE_EXHAUSTED, and the keepalive settings let a client ping.

Config and mapping tests need no models; the rest run real in-process servers over the prepared
model set (one engine for the module) and stream silence in PCM, which keeps the models cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from relais.errors import DeadlineExceeded
from relais.server.app import grpc_keepalive_options, start_in_process
from relais.server.config import ServerConfig, load_config
from relais.server.interceptor import status_for
from relais.server.web import close_code_for
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

LOCAL = {"host": "127.0.0.1", "port": 0, "metrics_port": 0}
PCM16K = pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000)
SILENCE = bytes(8000)  # 0.25 s of 16 kHz PCM_S16LE
CONFIG = pb.TranslateRequest(config=pb.StreamConfig(source_language="fr", target_language="en", input_format=PCM16K))
AUDIO = pb.TranslateRequest(audio=pb.AudioChunk(data=SILENCE))


# --- config and mapping (no models) ----------------------------------------------------------------

def test_limit_keys_defaults_and_validation():
    server = load_config(env={}).server
    assert (server.idle_timeout_s, server.keepalive_time_s, server.keepalive_timeout_s,
            server.keepalive_min_client_ping_s) == (30.0, 60.0, 20.0, 10.0)
    for key in ("idle_timeout_s", "keepalive_time_s", "keepalive_timeout_s", "keepalive_min_client_ping_s"):
        with pytest.raises(ValueError, match=f"server.{key}: must be > 0 seconds, got 0.0"):
            load_config(env={f"RELAIS_SERVER_{key.upper()}": "0"})


def test_keepalive_keys_become_grpc_options():
    server = ServerConfig().replace(server={"keepalive_time_s": 45, "keepalive_timeout_s": 5.5,
                                            "keepalive_min_client_ping_s": 15}).server
    assert dict(grpc_keepalive_options(server)) == {
        "grpc.keepalive_time_ms": 45000, "grpc.keepalive_timeout_ms": 5500, "grpc.http2.ping_timeout_ms": 5500,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 15000, "grpc.keepalive_permit_without_calls": 1}


def test_deadline_exceeded_maps_to_its_status_and_close_code():
    assert status_for(DeadlineExceeded("no audio for 1 s")) == (grpc.StatusCode.DEADLINE_EXCEEDED, "no audio for 1 s")
    assert close_code_for(DeadlineExceeded("x")) == 4000 + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


# --- real servers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine

    return TranslationEngine(EngineConfig(models_dir=model_set.root))


def _config(model_set, **server) -> ServerConfig:
    return ServerConfig().replace(server={**LOCAL, **server}, models={"dir": str(model_set.root)},
                                  runtime={"providers": ["cpu"]})


@pytest.fixture(scope="module")
def limited(model_set, engine):
    """A server with short limits: 3 s per stream, 1 s without audio, 1 MB messages; the web port on."""
    handle = start_in_process(_config(model_set, max_session_s=3, idle_timeout_s=1, max_message_mb=1, web_port=0),
                              engine=engine)
    yield handle
    handle.close()


def _metric(text: str, name: str) -> float:
    line = next((line for line in text.splitlines() if line.startswith(name + " ")), f"{name} 0")
    return float(line.split()[-1])


def _sessions_active(handle, settle_s: float = 10.0) -> float:
    """relais_sessions_active once it is 0, or its value after ``settle_s``."""
    deadline = time.monotonic() + settle_s
    while (active := _metric(handle.server.metrics.exposition().decode(), "relais_sessions_active")) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    return active


def _chunks(over: threading.Event, count: int | None, *, config: bool = True, hang: bool = False,
            every_s: float = 0.25, chunk: pb.TranslateRequest = AUDIO) -> Iterator[pb.TranslateRequest]:
    """The config, ``count`` chunks (None: until the call is over) ``every_s`` apart; then the end of
    the requests, or with ``hang`` nothing more until the call is over."""
    if config:
        yield CONFIG
    sent = 0
    while (count is None or sent < count) and not over.is_set():
        yield chunk
        sent += 1
        over.wait(every_s)
    if hang:
        over.wait(60)


def _translate(address: str, requests: Callable[[threading.Event], Iterator], channel_options=(),
               timeout_s: float = 60.0):
    """(responses, status code, details, seconds) of one Translate stream; ``requests(over)`` makes the
    requests, and ``over`` is set when the call has ended (so that no sending thread is left behind)."""
    over = threading.Event()
    responses = []
    with grpc.insecure_channel(address, options=list(channel_options)) as channel:
        started = time.monotonic()
        try:
            for response in pb_grpc.SpeechTranslatorStub(channel).Translate(requests(over), timeout=timeout_s):
                responses.append(response)
        except grpc.RpcError as err:
            return responses, err.code(), err.details(), time.monotonic() - started
        finally:
            over.set()
    return responses, grpc.StatusCode.OK, "", time.monotonic() - started


@pytest.mark.parametrize("requests, message, min_s, max_s", [
    (lambda over: _chunks(over, 0, config=False, hang=True), "no StreamConfig for 1 s (server.idle_timeout_s)",
     0.9, 2.5),
    (lambda over: _chunks(over, 0, hang=True), "no audio for 1 s (server.idle_timeout_s)", 0.9, 2.5),
    # 4 chunks, the last at 0.75 s: idle from then on
    (lambda over: _chunks(over, 4, hang=True), "no audio for 1 s (server.idle_timeout_s)", 1.65, 2.9),
    (lambda over: _chunks(over, None), "the stream ran past server.max_session_s=3 s", 2.9, 6.0),  # never idle
], ids=["before-config", "after-config", "between-chunks", "max-session"])
def test_time_limits_end_the_stream_with_deadline_exceeded(limited, requests, message, min_s, max_s):
    """Each limit ends the stream with DEADLINE_EXCEEDED and a message naming its key, at about its time;
    the session slot is given back; the stream counts as the client's doing (outcome client_error)."""
    text = limited.server.metrics.exposition().decode()
    before = _metric(text, 'relais_errors_total{code="DEADLINE_EXCEEDED"}')
    before_outcomes = {o: _metric(text, f'relais_sessions_total{{outcome="{o}"}}') for o in ("client_error", "error")}
    _, code, details, took_s = _translate(limited.address, requests)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert message in details
    assert min_s <= took_s <= max_s, took_s
    text = limited.server.metrics.exposition().decode()
    assert _metric(text, 'relais_errors_total{code="DEADLINE_EXCEEDED"}') == before + 1
    assert _sessions_active(limited) == 0
    text = limited.server.metrics.exposition().decode()
    assert _metric(text, 'relais_sessions_total{outcome="client_error"}') == before_outcomes["client_error"] + 1
    assert _metric(text, 'relais_sessions_total{outcome="error"}') == before_outcomes["error"]


def test_a_stream_that_keeps_sending_is_not_idle(limited):
    """2 s of chunks 0.25 s apart (twice the idle timeout in all): the stream ends normally."""
    responses, code, details, _ = _translate(limited.address, lambda over: _chunks(over, 8))
    assert code == grpc.StatusCode.OK, details
    assert responses[0].HasField("started") and responses[-1].HasField("summary")
    assert responses[-1].summary.audio_in_s == pytest.approx(2.0, abs=0.01)
    assert _sessions_active(limited) == 0


def test_idle_websocket_is_closed_with_4004(limited):
    """The WebSocket shares the host's limits: config, then silence on the wire -> an error frame with
    DEADLINE_EXCEEDED and close code 4004 (4000 + DEADLINE_EXCEEDED)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def idle():
        async with connect(f"ws://127.0.0.1:{limited.server.web_port}/v1/translate") as ws:
            await ws.send(json.dumps({"sourceLanguage": "fr", "targetLanguage": "en",
                                      "inputFormat": {"encoding": "PCM_S16LE", "sampleRateHz": 16000}}))
            messages = []
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    messages.append(json.loads(message))
            return messages, ws.close_code

    messages, close_code = asyncio.run(idle())
    assert "started" in messages[0] and close_code == 4004
    assert messages[-1]["error"] == {"code": "DEADLINE_EXCEEDED", "closeCode": 4004,
                                     "message": "no audio for 1 s (server.idle_timeout_s)"}
    assert _sessions_active(limited) == 0


def test_oversize_message_is_resource_exhausted_with_the_limit(limited):
    """A chunk over server.max_message_mb (1 MB here) is refused by gRPC itself: RESOURCE_EXHAUSTED, with
    the message's size and the limit in bytes; the slot is given back."""
    big = pb.TranslateRequest(audio=pb.AudioChunk(data=bytes(3 * 1024 * 1024 // 2)))
    _, code, details, _ = _translate(limited.address, lambda over: _chunks(over, 1, chunk=big, hang=True))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert "larger than max" in details and f"vs. {1024 * 1024}" in details, details
    assert _sessions_active(limited) == 0


CLIENT_PINGS = [("grpc.keepalive_time_ms", 1500), ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]


@pytest.mark.parametrize("min_client_ping_s, expected, message", [
    (1, grpc.StatusCode.OK, ""), (300, grpc.StatusCode.UNAVAILABLE, "Too many pings")],
    ids=["allowed", "gRPC-default-300s"])
def test_keepalive_pings(model_set, engine, min_client_ping_s, expected, message):
    """A server with the keepalive options serves a client that pings every 1.5 s through an 8 s pause in
    its stream (no traffic either way, so the client pings and every ping is 'without data'). The
    control: with gRPC's default minimum (300 s) the same client is cut off (GOAWAY too_many_pings),
    so the setting is what lets it through. (The server's own pings stay at the default 60 s here:
    pings it sent would be traffic that could spare the client from pinging at all.)"""
    def paused(over: threading.Event) -> Iterator[pb.TranslateRequest]:
        yield from (CONFIG, AUDIO)
        over.wait(8)
        yield AUDIO

    config = _config(model_set, keepalive_min_client_ping_s=min_client_ping_s)
    with start_in_process(config, engine=engine) as handle:
        responses, code, details, _ = _translate(handle.address, paused, CLIENT_PINGS)
        assert code == expected and message in details, (code, details)
        if expected == grpc.StatusCode.OK:
            assert responses[-1].HasField("summary")
        assert _sessions_active(handle) == 0


class _BlackHole:
    """A TCP proxy for one connection that, once ``cut`` is set, drops every byte both ways without closing
    anything: to the server the client has vanished (as behind a dead NAT entry)."""

    def __init__(self, target_port: int):
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._target_port = target_port
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(("127.0.0.1", self._target_port))
        self._sockets += [client, server]
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.cut.is_set():
                    sink.sendall(data)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_keepalive_frees_the_slot_of_a_vanished_client(model_set, engine):
    """The client's connection goes silent both ways (no FIN, no RST): the server's pings go unanswered
    (keepalive every 1 s, 1 s to answer any ping here), it closes the connection and the stream's slot is
    freed, long before the idle timeout (60 s here) would have."""
    config = _config(model_set, keepalive_time_s=1, keepalive_timeout_s=1, idle_timeout_s=60)
    with start_in_process(config, engine=engine) as handle:
        proxy = _BlackHole(handle.server.port)
        over = threading.Event()
        channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
        try:
            call = pb_grpc.SpeechTranslatorStub(channel).Translate(_chunks(over, None), timeout=60)
            assert next(call).HasField("started")
            assert _sessions_active(handle, settle_s=0) == 1
            proxy.cut.set()
            cut_at = time.monotonic()
            assert _sessions_active(handle, settle_s=20) == 0
            freed_s = time.monotonic() - cut_at
        finally:
            over.set()
            channel.close()
            proxy.close()
        assert freed_s < 6, freed_s  # keepalive 1 s + 1 s, and gRPC's own timers
        assert _metric(handle.server.metrics.exposition().decode(), 'relais_sessions_total{outcome="cancelled"}') == 1


# --- a client that stops reading, audio faster than real time ---------------------------------------

def _speech_requests(over: threading.Event, utterance_id: str = "fleurs_fr_test_1690", chunk_s: float = 0.5):
    """The config (speech out), then a real French clip as PCM chunks as fast as possible, then
    nothing more (the request stream stays open) until the call is over."""
    from conftest import load_audio, load_manifest

    utt = next(u for u in load_manifest("fr_en_dev") if u.id == utterance_id)
    pcm = (np.clip(load_audio(utt.path), -1, 1) * 32767).astype("<i2").tobytes()
    yield CONFIG
    step = int(chunk_s * 16000) * 2
    for i in range(0, len(pcm), step):
        if over.is_set():
            return
        yield pb.TranslateRequest(audio=pb.AudioChunk(data=pcm[i:i + step]))
    over.wait(60)


def test_a_client_that_stops_reading_is_cut_off_with_resource_exhausted(model_set, engine):
    """The client sends 23 s of French speech and reads nothing: once the translated speech fills
    the connection's flow-control window, the server's writes wait; after server.send_timeout_s
    (2 s here) the stream ends with RESOURCE_EXHAUSTED saying what to do, and its slot is freed."""
    config = _config(model_set, send_timeout_s=2, idle_timeout_s=60)
    with start_in_process(config, engine=engine) as handle:
        over = threading.Event()
        # no BDP probing: the client's receive window stays at HTTP/2's 64 KiB, which a few seconds of
        # 22 kHz speech fill
        with grpc.insecure_channel(handle.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            call = pb_grpc.SpeechTranslatorStub(channel).Translate(_speech_requests(over), timeout=90)
            try:
                assert next(call).HasField("started")  # the session is open; from here on, nothing is read
                deadline = time.monotonic() + 60
                while _sessions_active(handle, settle_s=0) and time.monotonic() < deadline:
                    time.sleep(0.2)  # not reading: the server must give up on its own
                freed = _sessions_active(handle, settle_s=0) == 0
                with pytest.raises(grpc.RpcError) as ended:
                    for _ in call:  # now read what was buffered, then the status
                        pass
            finally:
                over.set()
        assert freed, "the server kept the session of a client that reads nothing"
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "has not read the responses for 2 s (server.send_timeout_s)" in ended.value.details()
        text = handle.server.metrics.exposition().decode()  # the client's doing, not a server fault
        assert _metric(text, 'relais_sessions_total{outcome="client_error"}') == 1
        assert _metric(text, 'relais_sessions_total{outcome="error"}') == 0


def test_audio_faster_than_real_time_is_paced_not_refused(model_set, engine):
    """47 s of speech (a 23 s clip twice) as 48 kHz stereo float32 (18 MB, more than the HTTP/2
    windows buffer), sent as fast as possible with server.max_backlog_s 2: the server stops reading
    while 2 s of audio wait for the session, so the sender is held back until the session has nearly
    caught up; nothing is dropped and the translation is whole."""
    import soxr

    from conftest import load_audio, load_manifest

    utt = next(u for u in load_manifest("fr_en_dev") if u.id == "fleurs_fr_test_1690")
    mono = soxr.resample(np.tile(load_audio(utt.path), 2), 16000, 48000)
    data = np.stack([mono, mono], axis=1).astype("<f4").tobytes()
    config = pb.TranslateRequest(config=pb.StreamConfig(
        source_language="fr", target_language="en", return_audio=False,
        input_format=pb.AudioFormat(encoding=pb.PCM_F32LE, sample_rate_hz=48000, channels=2)))
    sent_at: list[float] = []

    def requests():
        yield config
        step = 48000 * 2 * 4 // 2  # 0.5 s
        for i in range(0, len(data), step):
            sent_at.append(time.monotonic())
            yield pb.TranslateRequest(audio=pb.AudioChunk(data=data[i:i + step]))

    with start_in_process(_config(model_set, max_backlog_s=2), engine=engine) as handle:
        with grpc.insecure_channel(handle.address) as channel:
            started = time.monotonic()
            responses = list(pb_grpc.SpeechTranslatorStub(channel).Translate(requests(), timeout=180))
            ended = time.monotonic()
    summary = responses[-1].summary
    assert summary.audio_in_s == pytest.approx(2 * utt.duration_s, abs=0.01)
    assert {"athletes", "organization"} & set(summary.translation.lower().split()), summary.translation
    # unpaced, all 94 chunks would leave within a fraction of a second; paced, the last leaves once
    # the session is within 2 s (+ what the transport buffers) of the end
    send_s, total_s = sent_at[-1] - started, ended - started
    assert len(sent_at) == 94 and send_s > 0.4 * total_s, (send_s, total_s)
