"""The speech stage: committed text in, translated speech out, paced by the listener's playback.

The speaker estimates the client's playback timeline in source seconds: a segment emitted
at ``now`` (the step's ``source_received_s``) plays from max(end of the previous segment,
now) for its duration, so ``playback_end_s = max(playback_end_s, now) + duration`` and the
backlog is ``max(0, playback_end_s - now)``. The rule:

- backlog below ``idle_backlog_s`` (playback about to fall silent): speak every pending
  word now, even a single one;
- earlier speech still playing: group words into phrases, i.e. speak up to the last
  sentence or clause end, or everything once ``phrase_max_words`` words wait;
- utterance end or end of stream: speak everything.

The speaking rate follows the backlog: Piper's length scale is the voice's own times a
factor falling linearly from 1 at ``speedup_from_s`` (1.5 s) of backlog to ``min_length_factor``
at ``speedup_full_s`` and beyond. Each phrase's leading and trailing silence is trimmed, and a
phrase its sentence goes on after is voiced as continuing, not as a sentence of its own, and
the phrase after it as resuming that sentence: a word boundary opens it, and the phrase before it
ends at its last loud frame.
``Speaker`` holds the shared voice and these rules; ``SpeakerState`` the words still
waiting, the source span they translate and the playback estimate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from relais.pipeline.events import PipelineEvent, SpeechSegment, TextKind, TextSegment, UtteranceEnd
from relais.pipeline.scheduler import StreamCalls
from relais.runtime.tts import CLAUSE_END, PHRASE_END, SENTENCE_END, PiperTts, trim_silence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechSettings:
    idle_backlog_s: float = 0.25  # less audio than this left to play (about one TTS call): speak what waits
    speedup_from_s: float = 1.5  # backlog where speech starts to get faster (below: the voice's own rate)
    speedup_full_s: float = 3.0  # backlog where it reaches min_length_factor
    min_length_factor: float = 0.8  # fastest length scale, x the voice's (0.8: 25% faster); 1.0: never faster
    trim_silence: bool = True  # cut the silence Piper pads each phrase with
    resume_phrases: bool = True  # voice a phrase that goes on with an open sentence after a word boundary

    def __post_init__(self):
        if self.idle_backlog_s < 0:
            raise ValueError(f"speech.idle_backlog_s must be >= 0, got {self.idle_backlog_s}")
        if not 0 <= self.speedup_from_s < self.speedup_full_s:
            raise ValueError(f"speech needs 0 <= speedup_from_s < speedup_full_s, got "
                             f"{self.speedup_from_s} and {self.speedup_full_s}")
        if not 0 < self.min_length_factor <= 1:
            raise ValueError(f"speech.min_length_factor must be in (0, 1], got {self.min_length_factor}")

    def length_factor(self, backlog_s: float) -> float:
        """The voice's length scale is multiplied by this (1: its own rate) for a given backlog."""
        ramp = (backlog_s - self.speedup_from_s) / (self.speedup_full_s - self.speedup_from_s)
        return 1.0 - (1.0 - self.min_length_factor) * min(1.0, max(0.0, ramp))


def opens_next(phrase: str) -> bool:
    """Whether the phrase after ``phrase`` (in the same utterance) opens a sentence: ``phrase`` ended one."""
    return bool(SENTENCE_END.search(phrase))


def voice_phrase(voice: PiperTts, phrase: str, length_scale: float | None, *, continues: bool, resumes: bool,
                 joined: bool, trim: bool = True) -> np.ndarray:
    """One phrase as the speaker voices it (``PiperTts.synthesize`` with ``continues``/``resumes``), its
    silence trimmed. ``joined``: the next phrase resumes this one's sentence, so this one ends at its last
    loud frame: the next one's leading word boundary is the pause between them (with a margin here too,
    the junction ran long)."""
    audio = voice.synthesize(phrase, length_scale, continues=continues, resumes=resumes)
    return trim_silence(audio, voice.sample_rate_hz, end_margin_s=0.0 if joined else None) if trim else audio


@dataclass
class SpeakerState:
    pending: list[str] = field(default_factory=list)  # committed words not yet spoken
    span_start_s: float = 0.0
    span_end_s: float = 0.0
    playback_end_s: float = 0.0  # estimated end of the client's playback, source seconds
    resumes: bool = False  # the last phrase left its sentence open: the next one goes on with it

    def backlog_s(self, now_s: float) -> float:
        return max(0.0, self.playback_end_s - now_s)


class Speaker:
    def __init__(self, voice: PiperTts, phrase_max_words: int, calls: StreamCalls, *,
                 settings: SpeechSettings = SpeechSettings()):
        self.voice = voice
        self.phrase_max_words = phrase_max_words  # 0: sentence and clause ends only
        self.calls = calls
        self.settings = settings

    def new_state(self) -> SpeakerState:
        return SpeakerState()

    def step(self, state: SpeakerState, events: list[PipelineEvent]) -> list[SpeechSegment]:
        """The events of one recognition step: queue the committed words, speak what the rule says
        (everything, when the step ended an utterance)."""
        for segment in events:
            if isinstance(segment, TextSegment) and segment.kind is TextKind.TRANSLATION_FINAL:
                if not state.pending:
                    state.span_start_s = segment.start_s
                state.pending += segment.text.split()
                state.span_end_s = segment.end_s
        times = [e.source_received_s for e in events if hasattr(e, "source_received_s")]
        if not times:
            return []
        ended = any(isinstance(e, UtteranceEnd) for e in events)
        return self._speak(state, final=ended, now_s=max(times))

    def tick(self, state: SpeakerState, source_received_s: float) -> list[SpeechSegment]:
        """Source time passed without new text: speak the pending words if playback is about to fall silent."""
        return self._speak(state, final=False, now_s=source_received_s)

    def flush(self, state: SpeakerState, source_received_s: float) -> list[SpeechSegment]:
        return self._speak(state, final=True, now_s=source_received_s)

    def _cut(self, state: SpeakerState, final: bool, backlog_s: float) -> int:
        """How many of the pending words to speak now."""
        words = state.pending
        if final or backlog_s < self.settings.idle_backlog_s:
            return len(words)
        limit = self.phrase_max_words
        cut = 0
        for i, w in enumerate(words, start=1):
            if PHRASE_END.search(w) or (limit and i >= 2 and CLAUSE_END.search(w)):
                cut = i
        if cut == 0 and limit and len(words) >= limit:
            cut = len(words)
        return cut

    def _speak(self, state: SpeakerState, final: bool, now_s: float) -> list[SpeechSegment]:
        backlog_s = state.backlog_s(now_s)
        cut = self._cut(state, final, backlog_s) if state.pending else 0
        if cut == 0:
            if final:  # the utterance ended with everything spoken: the next one opens a sentence
                state.resumes = False
            return []
        phrase = " ".join(state.pending[:cut])
        state.pending = state.pending[cut:]
        span_start_s, state.span_start_s = state.span_start_s, state.span_end_s
        length_scale = self.voice.length_scale * self.settings.length_factor(backlog_s)
        # Before the utterance ends, a phrase without a sentence end is voiced as continuing, and
        # the next phrase as resuming its sentence (an utterance's first phrase opens one).
        resumes = state.resumes
        state.resumes = self.settings.resume_phrases and not final and not opens_next(phrase)
        audio = self.calls.run("tts", voice_phrase, self.voice, phrase, length_scale, continues=not final,
                               resumes=resumes, joined=state.resumes, trim=self.settings.trim_silence)
        if len(audio) == 0:
            return []
        segment = SpeechSegment(audio, self.voice.sample_rate_hz, phrase, span_start_s, state.span_end_s, now_s)
        state.playback_end_s = max(state.playback_end_s, now_s) + segment.duration_s
        log.debug("spoke %d words (%.2f s) at %.2f s, backlog %.2f s, length scale %.3f", cut, segment.duration_s,
                  now_s, backlog_s, length_scale)
        return [segment]
