"""The streaming client: options, real-time pacing, one Translate call per file or buffer.

A sender thread paces PCM_S16LE chunks of ``chunk_ms`` at ``speed`` x real time
(0 = as fast as possible) while the calling thread receives responses, so output
arrives while audio is still being sent. Stream time 0 is when gRPC asks for the first
audio chunk (the call is open and the config sent): the first source sample starts to
exist then, and each chunk is sent once its LAST sample exists (:func:`send_schedule`),
as a microphone would deliver it. Every response is stamped on arrival with the wall
seconds since stream time 0 and with the seconds of source audio sent by then.
gRPC failures propagate as ``grpc.RpcError``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais.audio.files import read_pcm16
from relais.audio.pcm import as_pcm16, pcm16_to_float
from relais.client.results import (Arrival, AudioReceived, ChunkSent, ClientEvent, ClientResult, ClientTimings,
                                   assemble_audio, response_event)
from relais.client.tls import ClientTls, open_channel
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc
from relais.wire import DEFAULT_LATENCY_MODE, LATENCY_MODE_TO_PB

log = logging.getLogger(__name__)

_END = object()  # the sender's end-of-audio marker in its queue


@dataclass(frozen=True)
class TranslateOptions:
    target_language: str
    source_language: str = ""  # "" = detect
    speed: float = 1.0  # x real time; 0 = as fast as possible
    chunk_ms: int = 100
    latency_mode: str = DEFAULT_LATENCY_MODE  # low | balanced | quality (relais.wire)
    voice: str = ""  # "" = the target language's default voice
    output_sample_rate_hz: int = 0  # 0 = the voice's own rate
    return_text: bool = True
    return_audio: bool = True
    client_id: str = "relais-client"

    def validate(self) -> TranslateOptions:
        if self.speed < 0:
            raise ValueError(f"speed must be >= 0 (0 = as fast as possible), got {self.speed}")
        if self.chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {self.chunk_ms}")
        if self.latency_mode not in LATENCY_MODE_TO_PB:
            raise ValueError(f"latency_mode must be one of {sorted(LATENCY_MODE_TO_PB)}, got {self.latency_mode!r}")
        if self.output_sample_rate_hz < 0:
            raise ValueError(f"output_sample_rate_hz must be >= 0, got {self.output_sample_rate_hz}")
        return self


class _Clock:
    """Wall seconds since stream time 0, source seconds sent, and when each chunk was sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t0: float | None = None
        self.sent_source_s = 0.0
        self.last_sent_s = 0.0
        self.chunks: list[ChunkSent] = []

    def start(self) -> float:
        """Stream time 0: now."""
        with self._lock:
            self.t0 = time.monotonic()
            return self.t0

    def sent(self, source_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            self.sent_source_s += source_s
            self.last_sent_s = now - self.t0
            self.chunks.append(ChunkSent(self.sent_source_s, self.last_sent_s))

    def now(self) -> Arrival:
        with self._lock:
            elapsed = 0.0 if self.t0 is None else time.monotonic() - self.t0
            return Arrival(elapsed, self.sent_source_s)


def send_schedule(chunk_frames: list[int], rate_hz: int, speed: float) -> list[float]:
    """When each chunk is due, in wall seconds since stream time 0: once its last sample exists
    (chunk ``i`` of ``c`` seconds at ``(i + 1) * c / speed``); all at 0 for ``speed`` 0."""
    if speed <= 0:
        return [0.0] * len(chunk_frames)
    due, frames = [], 0
    for n in chunk_frames:
        frames += n
        due.append(frames / rate_hz / speed)
    return due


class _Sender:
    """Paces chunks into a small queue from its own thread; gRPC drains it via :meth:`requests`."""

    def __init__(self, config: pb.StreamConfig, samples: np.ndarray, rate_hz: int, options: TranslateOptions,
                 clock: _Clock):
        frames = max(1, int(round(rate_hz * options.chunk_ms / 1000.0)))
        self._config = config
        self._chunks = [samples[i:i + frames] for i in range(0, len(samples), frames)]
        self._rate_hz = rate_hz
        self._speed = options.speed
        self._clock = clock
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relais-client-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self._ready.wait(0.1):  # until gRPC asks for the first audio chunk
            if self._stop.is_set():
                return
        started = self._clock.start()
        due = send_schedule([len(c) for c in self._chunks], self._rate_hz, self._speed)
        for chunk, due_s in zip(self._chunks, due):
            delay_s = started + due_s - time.monotonic()
            if delay_s > 0 and self._stop.wait(delay_s):
                return
            if not self._put(chunk):
                return
        self._put(_END)

    def requests(self) -> Iterator[pb.TranslateRequest]:
        yield pb.TranslateRequest(config=self._config)
        self._ready.set()  # gRPC wants the next message: stream time 0
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return  # half-close: end of speech
            self._clock.sent(len(item) / self._rate_hz)
            yield pb.TranslateRequest(audio=pb.AudioChunk(data=item.astype("<i2").tobytes()))


# --- the client --------------------------------------------------------------------------------

class TranslateClient:
    """One gRPC channel to a Relais server; each ``translate_*`` call is one Translate stream."""

    def __init__(self, address: str, *, timeout_s: float | None = None, tls: ClientTls | None = None,
                 token: str = ""):
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None  # auth (docs/security.md)
        self._channel = open_channel(address, tls)  # tls None: plaintext
        self._stub = pb_grpc.SpeechTranslatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TranslateClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def capabilities(self) -> pb.Capabilities:
        return self._stub.ListCapabilities(pb.ListCapabilitiesRequest(), timeout=self.timeout_s,
                                           metadata=self._metadata)

    def translate_file(self, path: str | Path, options: TranslateOptions,
                       on_event: Callable[[ClientEvent], None] | None = None) -> ClientResult:
        audio = read_pcm16(path)
        return self.translate_audio(audio.samples, audio.sample_rate_hz, options, on_event)

    def translate_audio(self, samples: np.ndarray, sample_rate_hz: int, options: TranslateOptions,
                        on_event: Callable[[ClientEvent], None] | None = None) -> ClientResult:
        """Stream ``samples`` (frames, or frames x channels; int16 or float) and collect every response.

        ``on_event`` is called on the receiving thread as each response arrives (for live display).
        """
        options.validate()
        samples = as_pcm16(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        config = _stream_config(options, sample_rate_hz, samples.shape[1])
        clock = _Clock()
        sender = _Sender(config, samples, sample_rate_hz, options, clock)
        result = ClientResult()
        pieces: list[tuple[float, np.ndarray]] = []
        log.info("streaming %.2f s of audio to %s (%s -> %s, speed %g)", len(samples) / sample_rate_hz,
                 self.address, options.source_language or "auto", options.target_language, options.speed)
        sender.start()
        call = self._stub.Translate(sender.requests(), timeout=self.timeout_s, metadata=self._metadata)
        try:
            for response in call:
                event = response_event(response, clock.now(), result)
                if event is None:
                    continue
                if isinstance(event, AudioReceived):
                    pieces.append((event.output_start_s, pcm16_to_float(response.audio.data)))
                result.events.append(event)
                if on_event is not None:
                    on_event(event)
        except BaseException:
            call.cancel()
            raise
        finally:
            sender.stop()
        end = clock.now()
        result.timings = _timings(result, clock, end)
        result.audio = assemble_audio(pieces, result.output_sample_rate_hz)
        return result


def translate_file(address: str, path: str | Path, options: TranslateOptions,
                   on_event: Callable[[ClientEvent], None] | None = None,
                   timeout_s: float | None = None, tls: ClientTls | None = None, token: str = "") -> ClientResult:
    """One-shot: connect to ``address`` (over TLS when ``tls`` is given), translate the file, close the channel."""
    with TranslateClient(address, timeout_s=timeout_s, tls=tls, token=token) as client:
        return client.translate_file(path, options, on_event)


# --- internals ---------------------------------------------------------------------------------

def _stream_config(options: TranslateOptions, rate_hz: int, channels: int) -> pb.StreamConfig:
    return pb.StreamConfig(
        source_language=options.source_language, target_language=options.target_language,
        input_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=rate_hz, channels=channels),
        output_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=options.output_sample_rate_hz),
        voice=options.voice, return_text=options.return_text, return_audio=options.return_audio,
        latency_mode=LATENCY_MODE_TO_PB[options.latency_mode], client_id=options.client_id)


def _timings(result: ClientResult, clock: _Clock, end: Arrival) -> ClientTimings:
    finals = [t for t in result.texts if t.kind == "translation_final" and t.text.strip()]
    chunks = result.audio_chunks
    return ClientTimings(
        audio_in_s=clock.sent_source_s, send_wall_s=clock.last_sent_s, total_wall_s=end.arrival_s,
        first_text_arrival_s=finals[0].arrival.arrival_s if finals else None,
        first_audio_arrival_s=chunks[0].arrival.arrival_s if chunks else None, chunks_sent=list(clock.chunks))
