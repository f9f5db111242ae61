"""What a streaming session emits (plain dataclasses; the server maps them to protobuf).

All times are seconds of SOURCE audio from the start of the stream, except
``source_received_s`` which says how much source audio the session had received
when it emitted the event (the computation-unaware clock). The server adds the
wall-clock emission time.

Text and speech go to the client; the other events (speech onset, detected
language, compute spent) are the stream's statistics. Everything the stream's
Summary says is folded from these events by ``StreamStats``: one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from relais.text import join_pieces


class TextKind(str, Enum):
    SOURCE_PARTIAL = "source_partial"
    SOURCE_FINAL = "source_final"
    TRANSLATION_PARTIAL = "translation_partial"
    TRANSLATION_FINAL = "translation_final"

    @property
    def is_final(self) -> bool:
        return self in (TextKind.SOURCE_FINAL, TextKind.TRANSLATION_FINAL)


@dataclass(frozen=True)
class TextSegment:
    kind: TextKind
    text: str  # FINAL: newly committed text to append; PARTIAL: current uncommitted tail
    language: str
    start_s: float
    end_s: float
    source_received_s: float


@dataclass(frozen=True)
class SpeechSegment:
    audio: np.ndarray  # float32 mono at sample_rate_hz (the voice's rate)
    sample_rate_hz: int
    text: str
    start_s: float  # source span the phrase translates
    end_s: float
    source_received_s: float

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate_hz


@dataclass(frozen=True)
class SpeechOnset:
    """The VAD confirmed speech (emitted for every utterance)."""

    start_s: float
    source_received_s: float


@dataclass(frozen=True)
class UtteranceEnd:
    """An utterance was closed (pause, length cut or end of stream): its text is all committed."""

    start_s: float
    end_s: float
    source_received_s: float


@dataclass(frozen=True)
class LanguageDetected:
    language: str
    probability: float
    source_received_s: float


@dataclass(frozen=True)
class ComputeSpent:
    """Model compute of one push/finish call, seconds by stage (queue wait excluded), and the
    call's share of the stream's load figures."""

    stage_s: dict[str, float]
    waited_s: float = 0.0  # queued for the scheduler
    steps: int = 0  # hypothesis steps run
    skipped_steps: float = 0.0  # hypothesis steps load shedding skipped


PipelineEvent = TextSegment | SpeechSegment | SpeechOnset | UtteranceEnd | LanguageDetected | ComputeSpent


@dataclass
class StreamStats:
    """A stream's statistics, folded from its events (``add``), never kept by the stages."""

    audio_out_s: float = 0.0
    compute_s: float = 0.0
    speech_onset_s: float | None = None  # source time the VAD first heard speech
    detected_language: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)  # cumulative compute per stage
    waited_s: float = 0.0  # model calls queued for the scheduler
    steps: int = 0  # hypothesis steps run
    skipped_steps: float = 0.0  # hypothesis steps skipped by load shedding
    finals: dict[TextKind, list[str]] = field(default_factory=dict)

    def add(self, event: PipelineEvent) -> None:
        if isinstance(event, TextSegment):
            if event.kind.is_final and event.text:
                self.finals.setdefault(event.kind, []).append(event.text)
        elif isinstance(event, SpeechSegment):
            self.audio_out_s += event.duration_s
        elif isinstance(event, SpeechOnset):
            if self.speech_onset_s is None:
                self.speech_onset_s = event.start_s
        elif isinstance(event, LanguageDetected):
            self.detected_language = event.language
        elif isinstance(event, ComputeSpent):
            for stage, seconds in event.stage_s.items():
                self.stage_s[stage] = self.stage_s.get(stage, 0.0) + seconds
                self.compute_s += seconds
            self.waited_s += event.waited_s
            self.steps += event.steps
            self.skipped_steps += event.skipped_steps

    def extend(self, events: list[PipelineEvent]) -> StreamStats:
        for event in events:
            self.add(event)
        return self

    @property
    def degraded_fraction(self) -> float:
        """Share of the hypothesis steps the latency profile asked for that load shedding skipped."""
        asked = self.steps + self.skipped_steps
        return self.skipped_steps / asked if asked else 0.0

    @property
    def translation(self) -> str:
        """Everything committed in the output language (the transcript, for transcription)."""
        return join_pieces(self.finals.get(TextKind.TRANSLATION_FINAL, []))

    @property
    def transcript(self) -> str:
        """The source transcript (only transcription sessions stream one)."""
        return join_pieces(self.finals.get(TextKind.SOURCE_FINAL, []))
