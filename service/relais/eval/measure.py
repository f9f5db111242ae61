"""Per-utterance latency figures from one streamed ClientResult.

Two clocks, as in the simultaneous-translation papers:

* ``realtime`` (computation-aware): audio was sent at 1x, each chunk once its last
  sample existed; a delay is the client's arrival time of a response, in wall seconds
  since stream time 0 (the first source sample), i.e. on the source's own timeline.
* ``simulated`` (computation-unaware): audio was sent as fast as possible; a delay is
  the server's ``emitted.source_received_s``: how much source it had read when it
  produced the output.

Output lag compares like with like with the server's ``relais_output_lag_seconds``
(emission wall time minus the wall time at which the source end of the span arrived):
in realtime mode it is the client arrival time of a final translation text minus the
client send time of the audio chunk holding the span's end (as recorded by the client;
without a record, its scheduled time ``(i + 1) * chunk_s``); in simulated mode it is
``source_received_s - source_end_s`` (source seconds read past the span: the lag with
compute time taken out).

Every response is also kept as it came (:class:`TimelineEvent`: partial and final texts,
audio chunks) with the send time of every audio chunk, so latency can be re-analysed
offline from results.json.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from relais.client import AudioReceived, ClientResult, TextReceived
from relais.client.results import ChunkSent
from relais.eval.latency import (TimedSpeech, TimedText, average_lagging, average_proportion,
                                 average_token_delay_speech, average_token_delay_text, differentiable_average_lagging,
                                 linear_slope, simuleval_average_lagging, speech_timeline, word_delays)

MODES = ("realtime", "simulated")
MIN_SLOPE_POINTS, MIN_SLOPE_SPAN_S = 5, 10.0  # a lag drift needs a few points over a stretch of source


@dataclass(frozen=True)
class LagPoint:
    source_end_s: float  # end of the committed span in the source
    lag_s: float


@dataclass(frozen=True)
class TimelineEvent:
    """One text or audio response as the client received it."""

    kind: str  # source_partial | source_final | translation_partial | translation_final | audio
    arrival_s: float  # client clock: since stream time 0
    source_received_s: float  # server: source seconds read when it emitted this
    emitted_wall_s: float  # server clock: since the stream's first audio reached it
    source_start_s: float
    source_end_s: float
    text: str  # the text, or the phrase an audio chunk speaks
    duration_s: float | None = None  # audio only
    output_start_s: float | None = None  # audio only: position in the output stream


@dataclass(frozen=True)
class Timeline:
    """Everything one stream received, in arrival order, and when each source chunk left the client."""

    events: list[TimelineEvent] = field(default_factory=list)
    chunk_sent_s: list[float] = field(default_factory=list)  # chunk i (source up to (i + 1) * chunk_ms) sent


def _r(x: float) -> float:
    return round(x, 4)


def record_timeline(result: ClientResult) -> Timeline:
    events = []
    for e in result.events:
        if isinstance(e, TextReceived):
            events.append(TimelineEvent(e.kind, _r(e.arrival.arrival_s), _r(e.emitted_source_received_s),
                                        _r(e.emitted_wall_s), _r(e.source_start_s), _r(e.source_end_s), e.text))
        elif isinstance(e, AudioReceived):
            events.append(TimelineEvent("audio", _r(e.arrival.arrival_s), _r(e.emitted_source_received_s),
                                        _r(e.emitted_wall_s), _r(e.source_start_s), _r(e.source_end_s), e.text,
                                        _r(e.duration_s), _r(e.output_start_s)))
    return Timeline(events, [_r(c.sent_s) for c in result.timings.chunks_sent])


@dataclass
class UtteranceFigures:
    id: str
    duration_s: float
    mode: str
    translation: str = ""
    transcript: str = ""
    reference: str = ""
    source_text: str = ""
    hyp_words: int = 0
    ref_words: int = 0
    # text output (final translation words)
    al_s: float | None = None  # SimulEval's AL: |Y| = reference length when there is a reference
    laal_s: float | None = None
    ap: float | None = None
    dal_s: float | None = None
    atd_text_s: float | None = None
    first_text_s: float | None = None  # first final translation, from the start of the source
    # speech output
    start_offset_s: float | None = None
    end_offset_s: float | None = None
    atd_speech_s: float | None = None
    discontinuities: int = 0
    discontinuity_s: float = 0.0
    audio_out_s: float = 0.0
    # lag and throughput
    lag_mean_s: float | None = None
    lag_max_s: float | None = None
    lag_slope: float | None = None  # seconds of lag per second of source (drift)
    lags: list[LagPoint] = field(default_factory=list)
    rtf: float | None = None  # server compute seconds / source seconds
    client_wall_rtf: float | None = None  # client wall time of the whole exchange / source seconds
    degraded_fraction: float | None = None  # share of the latency mode's decisions the loaded server skipped
    # the server's own view (Summary) and the client's matching figures, for the Prometheus comparison
    server_first_audio_from_onset_s: float | None = None
    client_first_audio_from_onset_s: float | None = None
    server_mean_lag_s: float | None = None
    asr_text: str = ""  # the output speech, transcribed (ASR-BLEU)
    timeline: Timeline = field(default_factory=Timeline)  # every response received, for offline re-analysis

    def to_dict(self) -> dict:
        return asdict(self)


def send_wall_s(source_s: float, duration_s: float, chunk_ms: int, speed: float = 1.0) -> float:
    """Scheduled client wall time (since stream time 0) at which the chunk holding source time ``source_s``
    was sent: when its last sample existed."""
    chunk_s = chunk_ms / 1000.0
    last = max(0, math.ceil(duration_s / chunk_s - 1e-9) - 1)
    index = min(max(0, math.ceil(source_s / chunk_s - 1e-6) - 1), last)
    return min((index + 1) * chunk_s, duration_s) / speed


def sent_wall_s(source_s: float, sent: list[ChunkSent]) -> float:
    """Recorded client wall time at which the chunk holding source time ``source_s`` was sent."""
    return next((c.sent_s for c in sent if c.source_end_s >= source_s - 1e-6), sent[-1].sent_s)


def measure(result: ClientResult, utt_id: str, duration_s: float, mode: str, *, reference: str = "",
            source_text: str = "", chunk_ms: int = 100) -> UtteranceFigures:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    realtime = mode == "realtime"
    source_s = result.timings.audio_in_s or duration_s
    finals = [t for t in result.texts if t.kind == "translation_final" and t.text.strip()]
    chunks = result.audio_chunks

    def delay(event) -> float:
        return event.arrival.arrival_s if realtime else event.emitted_source_received_s

    fig = UtteranceFigures(id=utt_id, duration_s=source_s, mode=mode, translation=result.translation,
                           transcript=result.transcript, reference=reference, source_text=source_text,
                           audio_out_s=result.audio_out_s, timeline=record_timeline(result))
    delays = word_delays([TimedText(t.text, delay(t)) for t in finals])
    fig.hyp_words, fig.ref_words = len(delays), len(reference.split())
    if delays:
        fig.al_s = simuleval_average_lagging(delays, source_s, fig.ref_words)
        fig.laal_s = average_lagging(delays, source_s, fig.ref_words)
        fig.ap = average_proportion(delays, source_s)
        fig.dal_s = differentiable_average_lagging(delays, source_s)
        fig.atd_text_s = average_token_delay_text(delays, source_s)
        fig.first_text_s = delays[0]
    if chunks:
        placed = [TimedSpeech(delay(a), a.duration_s) for a in chunks]
        timeline = speech_timeline(placed, source_s)
        fig.start_offset_s, fig.end_offset_s = timeline.start_offset_s, timeline.end_offset_s
        fig.discontinuities, fig.discontinuity_s = timeline.discontinuities, timeline.discontinuity_s
        fig.atd_speech_s = average_token_delay_speech(placed, source_s)
    sent = result.timings.chunks_sent
    if realtime:
        def sent_at(source_end_s: float) -> float:
            return sent_wall_s(source_end_s, sent) if sent else send_wall_s(source_end_s, source_s, chunk_ms)

        fig.lags = [LagPoint(t.source_end_s, max(0.0, t.arrival.arrival_s - sent_at(t.source_end_s)))
                    for t in finals]
    else:
        fig.lags = [LagPoint(t.source_end_s, max(0.0, t.emitted_source_received_s - t.source_end_s)) for t in finals]
    if fig.lags:
        values = [p.lag_s for p in fig.lags]
        fig.lag_mean_s, fig.lag_max_s = statistics.mean(values), max(values)
        ends = [p.source_end_s for p in fig.lags]
        if len(ends) >= MIN_SLOPE_POINTS and max(ends) - min(ends) >= MIN_SLOPE_SPAN_S:
            fig.lag_slope = linear_slope(ends, values)
    fig.client_wall_rtf = result.timings.client_rtf or None
    s = result.summary
    if s is not None:
        fig.rtf = s.real_time_factor
        fig.degraded_fraction = s.degraded_fraction
        fig.server_mean_lag_s = s.mean_output_lag_s if finals else None
        if chunks and s.first_audio_latency_s > 0:
            fig.server_first_audio_from_onset_s = s.first_audio_latency_s
            # the onset is a server-side (VAD) notion: take it on the server's stream clock (which starts when the
            # first chunk arrives), move it to the client clock (which starts when that chunk's first sample
            # existed, one chunk earlier in real time), then measure the first audio's arrival there
            if sent:
                first_sent_s = sent[0].sent_s
            else:
                first_sent_s = send_wall_s(0.0, source_s, chunk_ms) if realtime else 0.0
            onset_s = chunks[0].emitted_wall_s - s.first_audio_latency_s + first_sent_s
            fig.client_first_audio_from_onset_s = chunks[0].arrival.arrival_s - onset_s
    return fig
