"""What a Translate stream gave the client: its events, stamped on arrival, and the assembled result.

Each server response becomes one event (:func:`response_event`): ``SessionInfo``,
``TextReceived``, ``AudioReceived`` or ``ServerSummary``, the last three with the
client's :class:`Arrival` stamp. ``ClientResult`` holds them in arrival order, the
output audio placed at each chunk's ``output_start_s`` (:func:`assemble_audio`) and
the client's own timings.

The client's clock starts at stream time 0: the moment the first source sample
would start existing. In real time a chunk is sent when its last sample exists
(chunk ``i`` of ``c`` seconds at ``(i + 1) * c / speed``), so arrival times are
delays from the start of the source, as a listener beside the speaker would see them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from relais.v1 import translator_pb2 as pb
from relais.text import join_pieces
from relais.wire import text_kind_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """When the client received a response."""

    arrival_s: float  # wall seconds since stream time 0 (the first source sample)
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
    degraded_fraction: float = 0.0  # share of the latency mode's decisions skipped because the server was loaded
    queue_wait_s: float = 0.0  # seconds the stream's model calls waited for the server's scheduler


ClientEvent = SessionInfo | TextReceived | AudioReceived | ServerSummary


@dataclass(frozen=True)
class ChunkSent:
    """One audio chunk handed to gRPC."""

    source_end_s: float  # source seconds sent with it (the end of the chunk)
    sent_s: float  # wall seconds since stream time 0


@dataclass
class ClientTimings:
    audio_in_s: float = 0.0  # source audio sent
    send_wall_s: float = 0.0  # stream time 0 to the last chunk sent
    total_wall_s: float = 0.0  # stream time 0 to the end of the response stream
    first_text_arrival_s: float | None = None  # first final translation text
    first_audio_arrival_s: float | None = None
    chunks_sent: list[ChunkSent] = field(default_factory=list)  # every audio chunk, in order

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
        return join_pieces(t.text for t in self.texts if t.kind == "translation_final")

    @property
    def transcript(self) -> str:
        if self.summary is not None and self.summary.transcript:
            return self.summary.transcript
        return join_pieces(t.text for t in self.texts if t.kind == "source_final")

    @property
    def audio_out_s(self) -> float:
        return len(self.audio) / self.output_sample_rate_hz if self.output_sample_rate_hz else 0.0


def response_event(response: pb.TranslateResponse, arrival: Arrival, result: ClientResult) -> ClientEvent | None:
    """The event one response carries; the session info and the summary are also recorded on ``result``."""
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
        return TextReceived(text_kind_name(t.kind), t.text, t.language, t.source_span.start_s,
                            t.source_span.end_s, t.emitted.wall_s, t.emitted.source_received_s, arrival)
    if which == "audio":
        a = response.audio
        rate_hz = a.sample_rate_hz or result.output_sample_rate_hz
        result.output_sample_rate_hz = result.output_sample_rate_hz or rate_hz
        duration_s = (len(a.data) // 2) / rate_hz if rate_hz else 0.0  # PCM_S16LE: 2 bytes a sample
        return AudioReceived(a.text, rate_hz, a.output_start_s, duration_s, a.source_span.start_s,
                             a.source_span.end_s, a.emitted.wall_s, a.emitted.source_received_s, arrival)
    if which == "summary":
        s = response.summary
        result.summary = ServerSummary(s.audio_in_s, s.audio_out_s, s.first_text_latency_s, s.first_audio_latency_s,
                                       s.mean_output_lag_s, s.max_output_lag_s, s.real_time_factor,
                                       s.detected_language, s.translation, s.transcript,
                                       s.degraded_fraction, s.queue_wait_s)
        return result.summary
    log.warning("ignoring an unknown response (%s)", which)
    return None


def assemble_audio(pieces: list[tuple[float, np.ndarray]], rate_hz: int) -> np.ndarray:
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
