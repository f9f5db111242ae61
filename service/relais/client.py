"""A streaming client for relais.v1.SpeechTranslator.Translate (used by ``relais translate`` and the eval tools).

    with TranslateClient("127.0.0.1:50051") as client:
        result = client.translate_file("talk.wav", TranslateOptions(target_language="en", speed=1.0))
    result.translation, result.audio, result.output_sample_rate_hz, result.timings.first_audio_arrival_s

A sender thread paces PCM_S16LE chunks of ``chunk_ms`` at ``speed`` x real time
(0 = as fast as possible) while the calling thread receives responses, so output
arrives while audio is still being sent. Every response is stamped on arrival with
the wall seconds since the first audio chunk was handed to gRPC, and with the
seconds of source audio sent by then. gRPC failures propagate as ``grpc.RpcError``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from relais.audio.files import read_pcm16
from relais.audio.pcm import as_pcm16, pcm16_to_float
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LATENCY_MODES = {"low": pb.LOW_LATENCY, "balanced": pb.BALANCED, "quality": pb.HIGH_QUALITY}
TEXT_KINDS = {pb.TextEvent.SOURCE_PARTIAL: "source_partial", pb.TextEvent.SOURCE_FINAL: "source_final",
              pb.TextEvent.TRANSLATION_PARTIAL: "translation_partial",
              pb.TextEvent.TRANSLATION_FINAL: "translation_final"}
_END = object()


@dataclass(frozen=True)
class TranslateOptions:
    target_language: str
    source_language: str = ""  # "" = detect
    speed: float = 1.0  # x real time; 0 = as fast as possible
    chunk_ms: int = 100
    latency_mode: str = "balanced"  # low | balanced | quality
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
        if self.latency_mode not in LATENCY_MODES:
            raise ValueError(f"latency_mode must be one of {sorted(LATENCY_MODES)}, got {self.latency_mode!r}")
        if self.output_sample_rate_hz < 0:
            raise ValueError(f"output_sample_rate_hz must be >= 0, got {self.output_sample_rate_hz}")
        return self


@dataclass(frozen=True)
class Arrival:
    """When the client received a response."""

    arrival_s: float  # wall seconds since the first audio chunk was sent
    sent_source_s: float  # seconds of source audio sent by then


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    source_language: str
    target_language: str
    task: str
    voice: str
    output_sample_rate_hz: int
    models: tuple[str, ...]
    execution_provider: str


@dataclass(frozen=True)
class TextReceived:
    kind: str  # source_partial | source_final | translation_partial | translation_final
    text: str
    language: str
    source_start_s: float
    source_end_s: float
    emitted_wall_s: float  # server's clock: since the stream's first audio reached it
    emitted_source_received_s: float
    arrival: Arrival

    @property
    def is_final(self) -> bool:
        return self.kind.endswith("_final")


@dataclass(frozen=True)
class AudioReceived:
    text: str  # the phrase spoken
    sample_rate_hz: int
    output_start_s: float  # position in the output audio stream
    duration_s: float
    source_start_s: float
    source_end_s: float
    emitted_wall_s: float
    emitted_source_received_s: float
    arrival: Arrival

    @property
    def output_end_s(self) -> float:
        return self.output_start_s + self.duration_s


@dataclass(frozen=True)
class ServerSummary:
    audio_in_s: float
    audio_out_s: float
    first_text_latency_s: float
    first_audio_latency_s: float
    mean_output_lag_s: float
    max_output_lag_s: float
    real_time_factor: float
    detected_language: str
    translation: str
    transcript: str


ClientEvent = SessionInfo | TextReceived | AudioReceived | ServerSummary


@dataclass
class ClientTimings:
    audio_in_s: float = 0.0  # source audio sent
    send_wall_s: float = 0.0  # first to last chunk sent
    total_wall_s: float = 0.0  # first chunk sent to the end of the response stream
    first_text_arrival_s: float | None = None  # first final translation text
    first_audio_arrival_s: float | None = None

    @property
    def client_rtf(self) -> float:
        """Wall time of the whole exchange over the source duration (< 1 keeps up at speed 1)."""
        return self.total_wall_s / self.audio_in_s if self.audio_in_s > 0 else 0.0


@dataclass
class ClientResult:
    session: SessionInfo | None = None
    events: list[ClientEvent] = field(default_factory=list)  # in arrival order
    summary: ServerSummary | None = None
    timings: ClientTimings = field(default_factory=ClientTimings)
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # mono float32
    output_sample_rate_hz: int = 0

    @property
    def texts(self) -> list[TextReceived]:
        return [e for e in self.events if isinstance(e, TextReceived)]

    @property
    def audio_chunks(self) -> list[AudioReceived]:
        return [e for e in self.events if isinstance(e, AudioReceived)]

    @property
    def translation(self) -> str:
        if self.summary is not None and self.summary.translation:
            return self.summary.translation
        return " ".join(t.text.strip() for t in self.texts if t.kind == "translation_final" and t.text.strip())

    @property
    def transcript(self) -> str:
        if self.summary is not None and self.summary.transcript:
            return self.summary.transcript
        return " ".join(t.text.strip() for t in self.texts if t.kind == "source_final" and t.text.strip())

    @property
    def audio_out_s(self) -> float:
        return len(self.audio) / self.output_sample_rate_hz if self.output_sample_rate_hz else 0.0


class _Clock:
    """Wall seconds since the first audio chunk was handed to gRPC, and source seconds sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.t0: float | None = None
        self.sent_source_s = 0.0
        self.last_sent_s = 0.0

    def sent(self, source_s: float) -> None:
        with self._lock:
            now = time.monotonic()
            if self.t0 is None:
                self.t0 = now
            self.sent_source_s += source_s
            self.last_sent_s = now - self.t0

    def now(self) -> Arrival:
        with self._lock:
            elapsed = 0.0 if self.t0 is None else time.monotonic() - self.t0
            return Arrival(elapsed, self.sent_source_s)


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
        started = time.monotonic()
        source_s = 0.0
        for chunk in self._chunks:
            if self._speed > 0:
                delay_s = started + source_s / self._speed - time.monotonic()
                if delay_s > 0 and self._stop.wait(delay_s):
                    return
            if not self._put(chunk):
                return
            source_s += len(chunk) / self._rate_hz
        self._put(_END)

    def requests(self) -> Iterator[pb.TranslateRequest]:
        yield pb.TranslateRequest(config=self._config)
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

    def __init__(self, address: str, *, timeout_s: float | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.SpeechTranslatorStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TranslateClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def capabilities(self) -> pb.Capabilities:
        return self._stub.ListCapabilities(pb.ListCapabilitiesRequest(), timeout=self.timeout_s)

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
        call = self._stub.Translate(sender.requests(), timeout=self.timeout_s)
        try:
            for response in call:
                event = _event_of(response, clock.now(), result)
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
        result.audio = _assemble(pieces, result.output_sample_rate_hz)
        return result


def translate_file(address: str, path: str | Path, options: TranslateOptions,
                   on_event: Callable[[ClientEvent], None] | None = None,
                   timeout_s: float | None = None) -> ClientResult:
    """One-shot: connect to ``address``, translate the file, close the channel."""
    with TranslateClient(address, timeout_s=timeout_s) as client:
        return client.translate_file(path, options, on_event)


# --- internals ---------------------------------------------------------------------------------

def _stream_config(options: TranslateOptions, rate_hz: int, channels: int) -> pb.StreamConfig:
    return pb.StreamConfig(
        source_language=options.source_language, target_language=options.target_language,
        input_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=rate_hz, channels=channels),
        output_format=pb.AudioFormat(encoding=pb.PCM_S16LE, sample_rate_hz=options.output_sample_rate_hz),
        voice=options.voice, return_text=options.return_text, return_audio=options.return_audio,
        latency_mode=LATENCY_MODES[options.latency_mode], client_id=options.client_id)


def _event_of(response: pb.TranslateResponse, arrival: Arrival, result: ClientResult) -> ClientEvent | None:
    which = response.WhichOneof("event")
    if which == "started":
        s = response.started
        info = SessionInfo(s.session_id, s.source_language, s.target_language, s.task, s.voice,
                           s.output_format.sample_rate_hz, tuple(s.models), s.execution_provider)
        result.session = info
        result.output_sample_rate_hz = info.output_sample_rate_hz
        return info
    if which == "text":
        t = response.text
        return TextReceived(TEXT_KINDS.get(t.kind, "unspecified"), t.text, t.language, t.source_span.start_s,
                            t.source_span.end_s, t.emitted.wall_s, t.emitted.source_received_s, arrival)
    if which == "audio":
        a = response.audio
        rate_hz = a.sample_rate_hz or result.output_sample_rate_hz
        result.output_sample_rate_hz = result.output_sample_rate_hz or rate_hz
        duration_s = (len(a.data) // 2) / rate_hz if rate_hz else 0.0
        return AudioReceived(a.text, rate_hz, a.output_start_s, duration_s, a.source_span.start_s,
                             a.source_span.end_s, a.emitted.wall_s, a.emitted.source_received_s, arrival)
    if which == "summary":
        s = response.summary
        result.summary = ServerSummary(s.audio_in_s, s.audio_out_s, s.first_text_latency_s, s.first_audio_latency_s,
                                       s.mean_output_lag_s, s.max_output_lag_s, s.real_time_factor,
                                       s.detected_language, s.translation, s.transcript)
        return result.summary
    log.warning("ignoring an unknown response (%s)", which)
    return None


def _assemble(pieces: list[tuple[float, np.ndarray]], rate_hz: int) -> np.ndarray:
    """Place each chunk at its output_start_s (gaps become silence; overlaps keep arrival order)."""
    if not pieces or not rate_hz:
        return np.zeros(0, np.float32)
    out = np.zeros(0, np.float32)
    for start_s, pcm in pieces:
        start = max(0, int(round(start_s * rate_hz)))
        if abs(start - len(out)) <= 1:  # contiguous up to rounding
            start = len(out)
        end = start + len(pcm)
        if end > len(out):
            out = np.concatenate([out, np.zeros(end - len(out), np.float32)])
        out[start:end] = pcm
    return out


def _timings(result: ClientResult, clock: _Clock, end: Arrival) -> ClientTimings:
    finals = [t for t in result.texts if t.kind == "translation_final" and t.text.strip()]
    chunks = result.audio_chunks
    return ClientTimings(
        audio_in_s=clock.sent_source_s, send_wall_s=clock.last_sent_s, total_wall_s=end.arrival_s,
        first_text_arrival_s=finals[0].arrival.arrival_s if finals else None,
        first_audio_arrival_s=chunks[0].arrival.arrival_s if chunks else None)
