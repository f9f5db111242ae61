"""What a streaming session emits (plain dataclasses; the server maps them to protobuf).

All times are seconds of SOURCE audio from the start of the stream, except
``source_received_s`` which says how much source audio the session had received
when it emitted the event (the computation-unaware clock). The server adds the
wall-clock emission time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class TextKind(str, Enum):
    SOURCE_PARTIAL = "source_partial"
    SOURCE_FINAL = "source_final"
    TRANSLATION_PARTIAL = "translation_partial"
    TRANSLATION_FINAL = "translation_final"


@dataclass
class TextSegment:
    kind: TextKind
    text: str  # FINAL: newly committed text to append; PARTIAL: current uncommitted tail
    language: str
    start_s: float
    end_s: float
    source_received_s: float


@dataclass
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


@dataclass
class SessionStats:
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    compute_s: float = 0.0
    speech_onset_s: float | None = None  # source time VAD first heard speech
    detected_language: str = ""
    translation: str = ""
    transcript: str = ""
    stage_s: dict[str, float] = field(default_factory=dict)  # cumulative compute per stage


PipelineEvent = TextSegment | SpeechSegment
