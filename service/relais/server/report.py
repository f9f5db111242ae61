"""A stream's report: its pipeline events on the server's wall clock, folded into its Summary.

The servicer stamps each chunk of source audio with its arrival time and hands every
event the session returns to ``StreamReport.observe`` with the time it is sent.
Latencies are measured from when the source audio reached the server, not from when
the session got round to it. The Summary (and the per-stream metrics) come from
this one fold, never from the session's internals.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np

from relais.pipeline.events import PipelineEvent, SpeechSegment, StreamStats, TextKind, TextSegment


@dataclass(frozen=True)
class StreamSummary:
    audio_in_s: float
    audio_out_s: float
    first_text_latency_s: float | None  # speech onset (arrival) -> first committed text sent
    first_audio_latency_s: float | None  # speech onset (arrival) -> first translated audio sent
    output_lags_s: list[float]  # per committed text: arrival of its source span end -> sent
    real_time_factor: float
    detected_language: str
    translation: str
    transcript: str

    @property
    def mean_output_lag_s(self) -> float:
        return float(np.mean(self.output_lags_s)) if self.output_lags_s else 0.0

    @property
    def max_output_lag_s(self) -> float:
        return max(self.output_lags_s, default=0.0)


@dataclass
class StreamReport:
    stats: StreamStats = field(default_factory=StreamStats)
    audio_in_s: float = 0.0  # pipeline audio pushed into the session
    first_audio_wall: float | None = None
    arrivals_s: list[float] = field(default_factory=list)  # source seconds received after each chunk
    arrivals_wall: list[float] = field(default_factory=list)
    first_speech_wall: float | None = None  # when the audio at the speech onset arrived
    first_final_wall: dict[TextKind, float] = field(default_factory=dict)
    final_lags_s: dict[TextKind, list[float]] = field(default_factory=dict)
    first_audio_out_wall: float | None = None

    def arrived(self, source_s: float, wall: float) -> None:
        if self.first_audio_wall is None:
            self.first_audio_wall = wall
        self.arrivals_s.append(source_s)
        self.arrivals_wall.append(wall)

    def wall_of(self, source_s: float) -> float:
        """Wall time at which source time ``source_s`` had arrived."""
        i = bisect.bisect_left(self.arrivals_s, source_s - 1e-6)
        return self.arrivals_wall[min(i, len(self.arrivals_wall) - 1)] if self.arrivals_wall else time.monotonic()

    def since_start(self, wall: float) -> float:
        return wall - (self.first_audio_wall or wall)

    def observe(self, events: list[PipelineEvent], now: float) -> None:
        """The events of one session call, sent at ``now``."""
        for event in events:
            self.stats.add(event)
            if isinstance(event, TextSegment) and event.kind.is_final and event.text.strip():
                self.first_final_wall.setdefault(event.kind, now)
                self.final_lags_s.setdefault(event.kind, []).append(max(0.0, now - self.wall_of(event.end_s)))
            elif isinstance(event, SpeechSegment) and self.first_audio_out_wall is None:
                self.first_audio_out_wall = now
        if self.first_speech_wall is None and self.stats.speech_onset_s is not None:
            self.first_speech_wall = self.wall_of(self.stats.speech_onset_s)

    def summary(self) -> StreamSummary:
        out_kind = TextKind.TRANSLATION_FINAL if TextKind.TRANSLATION_FINAL in self.first_final_wall \
            else TextKind.SOURCE_FINAL
        onset = self.first_speech_wall
        stats = self.stats
        return StreamSummary(
            audio_in_s=self.audio_in_s, audio_out_s=stats.audio_out_s,
            first_text_latency_s=_since(onset, self.first_final_wall.get(out_kind)),
            first_audio_latency_s=_since(onset, self.first_audio_out_wall),
            output_lags_s=list(self.final_lags_s.get(out_kind, [])),
            real_time_factor=stats.compute_s / self.audio_in_s if self.audio_in_s > 0 else 0.0,
            detected_language=stats.detected_language, translation=stats.translation,
            transcript=stats.transcript)


def _since(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)
