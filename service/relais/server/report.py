"""A stream's report: its pipeline events on the server's wall clock, observed as they happen.

The host stamps each chunk of source audio with its arrival time and hands every
event the session returns to ``StreamReport.observe`` with the time it is sent.
Latencies are measured from when the source audio reached the server, not from when
the session got round to it. Each latency is handed to the ``LatencySink`` (the
Prometheus metrics) the moment it is known (a committed text's output lag, each
utterance's first text and first audio), and the stream's Summary is folded from
the very same observations: the two cannot disagree, and a stream that fails or is
cancelled has already reported what it did.

The report also answers the live questions an alert asks while the stream runs
(``lag_s``, ``backlog_s``, ``uncommitted_s``).
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from relais.pipeline.events import (ComputeSpent, PipelineEvent, SpeechOnset, SpeechSegment, StreamStats, TextKind,
                                    TextSegment, UtteranceEnd)


class LatencySink(Protocol):
    def observe_output_lag(self, seconds: float) -> None: ...

    def observe_first_text(self, seconds: float) -> None: ...

    def observe_first_audio(self, seconds: float) -> None: ...

    def observe_steps(self, run: int, skipped: float) -> None: ...


@dataclass(frozen=True)
class StreamSummary:
    audio_in_s: float
    audio_out_s: float
    first_text_latencies_s: list[float]  # per utterance: speech onset (arrival) -> its first committed text sent
    first_audio_latencies_s: list[float]  # per utterance: speech onset (arrival) -> its first translated audio sent
    output_lags_s: list[float]  # per committed text: arrival of its source span end -> sent
    real_time_factor: float
    detected_language: str
    translation: str
    transcript: str
    degraded_fraction: float = 0.0  # share of the profile's hypothesis steps skipped under load
    queue_wait_s: float = 0.0  # seconds the stream's model calls queued for the scheduler

    @property
    def first_text_latency_s(self) -> float | None:
        return self.first_text_latencies_s[0] if self.first_text_latencies_s else None

    @property
    def first_audio_latency_s(self) -> float | None:
        return self.first_audio_latencies_s[0] if self.first_audio_latencies_s else None

    @property
    def mean_output_lag_s(self) -> float:
        return float(np.mean(self.output_lags_s)) if self.output_lags_s else 0.0

    @property
    def max_output_lag_s(self) -> float:
        return max(self.output_lags_s, default=0.0)


REAL_TIME_SLACK_S = 1.0  # audio this far ahead of real time still counts as sent in real time
# Chunk arrivals are kept for this much source time (longer than any utterance, whose onset and
# commits are looked up in them), so a stream that runs for days keeps a bounded record.
ARRIVALS_KEEP_S = 120.0


@dataclass
class _Utterance:
    start_s: float  # source time of its speech onset
    onset_wall: float  # when that audio arrived
    firsts_sent: set[str] = field(default_factory=set)  # "text", "audio": already observed for it


@dataclass(eq=False)  # identity: live reports are kept in a set
class StreamReport:
    sink: LatencySink | None = None
    stats: StreamStats = field(default_factory=StreamStats)
    audio_in_s: float = 0.0  # pipeline audio pushed into the session
    first_audio_wall: float | None = None
    arrivals_s: list[float] = field(default_factory=list)  # source seconds received after each recent chunk
    arrivals_wall: list[float] = field(default_factory=list)
    arrivals_dropped: int = 0  # chunks whose arrival was forgotten (older than ARRIVALS_KEEP_S)
    processed_chunks: int = 0  # chunks the session has finished with
    first_text_latencies_s: list[float] = field(default_factory=list)
    first_audio_latencies_s: list[float] = field(default_factory=list)
    output_lags_s: list[float] = field(default_factory=list)
    utterance: _Utterance | None = None  # the latest speech onset's utterance
    utterance_open: bool = False  # speech heard and not yet closed
    last_commit_wall: float | None = None
    playback_end_wall: float = 0.0  # when the listener's playback of the audio sent so far ends

    # -- input ------------------------------------------------------------------------------------
    def arrived(self, source_s: float, wall: float) -> None:
        if self.first_audio_wall is None:
            self.first_audio_wall = wall
        self.arrivals_s.append(source_s)
        self.arrivals_wall.append(wall)
        if self.arrivals_s[0] < source_s - 2 * ARRIVALS_KEEP_S:  # forget in batches, not on every chunk
            cut = bisect.bisect_left(self.arrivals_s, source_s - ARRIVALS_KEEP_S)
            cut = min(cut, self.processed_chunks - self.arrivals_dropped)  # lag_s still needs the pending ones
            del self.arrivals_s[:cut], self.arrivals_wall[:cut]
            self.arrivals_dropped += cut

    def processed(self, chunks: int) -> None:
        """The session has finished with the first ``chunks`` chunks that arrived."""
        self.processed_chunks = chunks

    def wall_of(self, source_s: float) -> float:
        """Wall time at which source time ``source_s`` had arrived (for source time older than the
        arrivals kept, the oldest kept one: the lag it gives is then a lower bound)."""
        i = bisect.bisect_left(self.arrivals_s, source_s - 1e-6)
        return self.arrivals_wall[min(i, len(self.arrivals_wall) - 1)] if self.arrivals_wall else time.monotonic()

    def since_start(self, wall: float) -> float:
        return wall - (self.first_audio_wall or wall)

    def ahead_of_real_time_s(self, now: float | None = None) -> float:
        """Seconds of audio given to the session beyond real time since the stream's first sample
        (the model scheduler serves such a stream after those that are not); 0 for a stream sent
        in real time, however far behind its output is, and for one less than REAL_TIME_SLACK_S ahead
        (a real-time client may send a whole chunk at its start)."""
        if self.first_audio_wall is None:
            return 0.0
        ahead = self.audio_in_s - ((time.monotonic() if now is None else now) - self.first_audio_wall)
        return ahead if ahead > REAL_TIME_SLACK_S else 0.0

    # -- output -----------------------------------------------------------------------------------
    def observe(self, events: list[PipelineEvent], now: float) -> None:
        """The events of one session call, sent at ``now``."""
        for event in events:
            self.stats.add(event)
            if isinstance(event, ComputeSpent):
                if self.sink is not None and (event.steps or event.skipped_steps):
                    self.sink.observe_steps(event.steps, event.skipped_steps)
            elif isinstance(event, SpeechOnset):
                self.utterance = _Utterance(event.start_s, self.wall_of(event.start_s))
                self.utterance_open = True
            elif isinstance(event, UtteranceEnd):
                self.utterance_open = False
            elif isinstance(event, TextSegment) and event.kind is TextKind.TRANSLATION_FINAL and event.text.strip():
                self._committed(event, now)
            elif isinstance(event, SpeechSegment):
                self._spoken(event, now)

    def _committed(self, event: TextSegment, now: float) -> None:
        self.last_commit_wall = now
        lag = max(0.0, now - self.wall_of(event.end_s))
        self.output_lags_s.append(lag)
        if self.sink is not None:
            self.sink.observe_output_lag(lag)
        self._first_of_utterance("text", event.start_s, now, self.first_text_latencies_s,
                                 self.sink.observe_first_text if self.sink is not None else None)

    def _spoken(self, event: SpeechSegment, now: float) -> None:
        self.playback_end_wall = max(self.playback_end_wall, now) + event.duration_s
        self._first_of_utterance("audio", event.start_s, now, self.first_audio_latencies_s,
                                 self.sink.observe_first_audio if self.sink is not None else None)

    def _first_of_utterance(self, what: str, start_s: float, now: float, series: list[float],
                            observe: Callable[[float], None] | None) -> None:
        """The current utterance's first ``what`` (text or audio) was sent at ``now``: record its latency once.
        Output of an earlier utterance (its span starts before this onset) does not count."""
        utt = self.utterance
        if utt is None or what in utt.firsts_sent or start_s < utt.start_s - 1e-6:
            return
        utt.firsts_sent.add(what)
        latency = max(0.0, now - utt.onset_wall)
        series.append(latency)
        if observe is not None:
            observe(latency)

    # -- live view (read by the metrics collector at scrape time) ---------------------------------
    def lag_s(self, now: float | None = None) -> float:
        """How long the oldest audio the session has not finished with has been waiting (0: caught up)."""
        now = time.monotonic() if now is None else now
        pending = self.processed_chunks - self.arrivals_dropped
        return max(0.0, now - self.arrivals_wall[pending]) if pending < len(self.arrivals_wall) else 0.0

    def backlog_s(self, now: float) -> float:
        """Translated speech sent but not yet heard, on the listener's playback timeline."""
        return max(0.0, self.playback_end_wall - now)

    def uncommitted_s(self, now: float) -> float:
        """Within an utterance, how long since anything was committed (0 outside speech)."""
        if not self.utterance_open or self.utterance is None:
            return 0.0
        since = max(self.utterance.onset_wall, self.last_commit_wall or 0.0)
        return max(0.0, now - since)

    def summary(self) -> StreamSummary:
        stats = self.stats
        return StreamSummary(
            audio_in_s=self.audio_in_s, audio_out_s=stats.audio_out_s,
            first_text_latencies_s=list(self.first_text_latencies_s),
            first_audio_latencies_s=list(self.first_audio_latencies_s),
            output_lags_s=list(self.output_lags_s),
            real_time_factor=stats.compute_s / self.audio_in_s if self.audio_in_s > 0 else 0.0,
            detected_language=stats.detected_language, translation=stats.translation,
            transcript=stats.transcript, degraded_fraction=stats.degraded_fraction, queue_wait_s=stats.waited_s)
