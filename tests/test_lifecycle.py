"""`relais serve` as operators run it: a real subprocess on the real model set.

- admission: with server.max_sessions=2, a third stream is refused with RESOURCE_EXHAUSTED
  while the two admitted ones keep flowing and finish;
- SIGTERM drain: health flips to NOT_SERVING at once, a new stream gets UNAVAILABLE, the two
  live streams (which still have audio to send after the signal) complete with their final
  audio and summary, and the process exits 0 within server.drain_grace_s;
- bad settings (file or environment) fail at start with exit status 2 and a message naming
  the key, before any model is loaded.

One server process serves the first two tests (the model set loads once); the SIGTERM test
comes last because it ends that process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc
from conftest import load_audio, load_manifest
from serving import NOT_SERVING, SERVING, health, relais_argv, relais_serve

DRAIN_GRACE_S = 30.0
CHUNK_S = 0.1
PCM16K = pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=16000)


def _clips(n: int) -> list[np.ndarray]:
    """The n shortest French dev clips longer than 4 s (real speech, a few seconds each)."""
    utts = sorted((u for u in load_manifest("fr_en_dev") if u.duration_s > 4.0), key=lambda u: u.duration_s)[:n]
    return [load_audio(u.path) for u in utts]


class LiveStream:
    """One Translate stream on its own thread: sends the first part of a clip paced at 2x real
    time, waits for ``release``, sends the rest, then half-closes; records every response."""

    def __init__(self, stub, samples: np.ndarray, release: threading.Event, first_part: float = 0.5):
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        step = int(16000 * CHUNK_S) * 2
        self.chunks = [pcm[i:i + step] for i in range(0, len(pcm), step)]
        self.split = int(len(self.chunks) * first_part)
        self.audio_s = len(samples) / 16000
        self.release = release
        self.first_part_sent = threading.Event()
        self.responses: list[tuple[float, pb.TranslateResponse]] = []
        self.error: grpc.RpcError | None = None
        self.last_chunk_sent_at: float | None = None
        self._call = stub.Translate(self._requests(), timeout=180)
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _requests(self):
        yield pb.TranslateRequest(config=pb.StreamConfig(
            source_language="fr", target_language="en", input_format=PCM16K, output_format=PCM16K,
            client_id="test_lifecycle"))
        for i, chunk in enumerate(self.chunks):
            if i == self.split:
                self.first_part_sent.set()
                self.release.wait(120)
            yield pb.TranslateRequest(audio=pb.AudioChunk(data=chunk))
            time.sleep(CHUNK_S / 2)
        self.last_chunk_sent_at = time.monotonic()

    def _consume(self) -> None:
        try:
            for response in self._call:
                self.responses.append((time.monotonic(), response))
        except grpc.RpcError as exc:
            self.error = exc

    def started(self) -> bool:
        return any(r.HasField("started") for _, r in self.responses)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not finish"

    def kinds_after(self, when: float) -> list[str]:
        return [r.WhichOneof("event") for t, r in self.responses if t > when]


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _assert_completed(stream: LiveStream) -> pb.Summary:
    assert stream.error is None, f"stream failed: {stream.error.code()}: {stream.error.details()}"
    kinds = [r.WhichOneof("event") for _, r in stream.responses]
    assert kinds[0] == "started" and kinds[-1] == "summary", kinds
    audio = [r.audio for _, r in stream.responses if r.HasField("audio")]
    assert audio and sum(len(a.data) for a in audio) > 0, "no translated audio"
    summary = stream.responses[-1][1].summary
    assert summary.audio_in_s == pytest.approx(stream.audio_s, abs=0.15)  # all the audio was taken
    assert summary.audio_out_s > 0 and len(summary.translation.split()) >= 2
    return summary


@pytest.fixture(scope="module")
def served(model_set, tmp_path_factory):
    """A `relais serve` subprocess (max_sessions=2) and a channel to it."""
    with relais_serve(model_set.root, tmp_path_factory.mktemp("lifecycle"),
                      f"max_sessions: 2\ndrain_grace_s: {DRAIN_GRACE_S}") as srv:
        yield srv.proc, srv.channel, pb_grpc.SpeechTranslatorStub(srv.channel), srv.log


def test_session_limit_refuses_the_extra_stream_while_the_others_flow(served):
    proc, _, stub, log = served
    release = threading.Event()
    streams = [LiveStream(stub, clip, release) for clip in _clips(2)]
    try:
        for s in streams:
            _wait(lambda s=s: s.started() and s.first_part_sent.is_set(), 60, "both streams admitted")
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Translate(iter([pb.TranslateRequest(config=pb.StreamConfig(
                source_language="fr", target_language="en", input_format=PCM16K))]), timeout=30))
        refused_at = time.monotonic()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_sessions" in err.value.details()
    finally:
        release.set()
    for s in streams:
        s.join(120)
        _assert_completed(s)
        assert "summary" in s.kinds_after(refused_at) and len(s.kinds_after(refused_at)) >= 2  # kept flowing
    assert proc.poll() is None


def test_sigterm_drains_live_streams_then_exits_zero(served):
    proc, channel, stub, log = served
    release = threading.Event()
    streams = [LiveStream(stub, clip, release) for clip in _clips(2)]
    try:
        for s in streams:
            _wait(lambda s=s: s.started() and s.first_part_sent.is_set(), 60, "both streams live")
        assert health(channel) == SERVING
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # health flips at once (well inside one kubelet probe period)
        _wait(lambda: health(channel) == NOT_SERVING, 1.0, "NOT_SERVING after SIGTERM")
        flipped_s = time.monotonic() - signalled
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Translate(iter([pb.TranslateRequest(config=pb.StreamConfig(
                source_language="fr", target_language="en", input_format=PCM16K))]), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
        assert "shutting down" in err.value.details()
    finally:
        release.set()  # the live streams still have half their audio to send
    for s in streams:
        s.join(DRAIN_GRACE_S + 30)
        _assert_completed(s)
        assert s.last_chunk_sent_at > signalled  # audio was still arriving during the drain
        assert "audio" in s.kinds_after(signalled)  # and translated speech came back after SIGTERM
    rc = proc.wait(DRAIN_GRACE_S + 10)
    exited_s = time.monotonic() - signalled
    assert rc == 0, log.read_text()[-3000:]
    assert exited_s < DRAIN_GRACE_S, f"took {exited_s:.1f} s to exit (grace {DRAIN_GRACE_S} s)"
    assert flipped_s < 1.0
    text = log.read_text()
    assert "draining" in text and "server stopped" in text and "cancelling" not in text


@pytest.mark.parametrize("yaml_text, env, message", [
    ("server:\n  max_sesions: 4\n", {}, "server.max_sesions"),
    ("server:\n  port: fifty\n", {}, "server.port: must be an integer"),
    ("server:\n  drain_grace_s: -1\n", {}, "server.drain_grace_s: must be >= 0"),
    ("sever:\n  port: 1\n", {}, "unknown section(s) ['sever']"),
    ("runtime:\n  providers: [cuda, gpu]\n", {}, "runtime.providers"),
    ("server:\n  port: 50051\n", {"RELAIS_SERVER_MAX_SESSIONS": "0"}, "server.max_sessions: must be at least 1"),
    ("", {"RELAIS_MODELS_PRECISON": "fp16"}, "models.precison"),
])
def test_invalid_config_fails_at_start_naming_the_key(tmp_path, yaml_text, env, message):
    config = tmp_path / "relais.yaml"
    config.write_text(yaml_text)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RELAIS_SERVER_", "RELAIS_MODELS_",
                                                                      "RELAIS_RUNTIME_"))}
    started = time.monotonic()
    done = subprocess.run([*relais_argv(), "serve", "--config", str(config)], env={**base, **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # refused before any model is loaded
