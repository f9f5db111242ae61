"""The speech stage: committed text in, translated speech out, phrase by phrase.

Committed words wait until they make a phrase: a sentence or clause end, or
``phrase_max_words`` words; everything left is spoken when the utterance ends. The
stream's first words are spoken at once (time to first audio matters most).
``Speaker`` holds the shared voice and the phrasing rule; ``SpeakerState`` the words
still waiting and the source span they translate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relais.pipeline.events import PipelineEvent, SpeechSegment, TextKind, TextSegment, UtteranceEnd
from relais.pipeline.scheduler import StreamCalls
from relais.runtime.tts import CLAUSE_END, PHRASE_END, PiperTts

FIRST_PHRASE_WORDS = 1  # the stream's first committed words are spoken at once


@dataclass
class SpeakerState:
    pending: list[str] = field(default_factory=list)  # committed words not yet spoken
    span_start_s: float = 0.0
    span_end_s: float = 0.0
    spoken_s: float = 0.0  # audio produced so far


class Speaker:
    def __init__(self, voice: PiperTts, phrase_max_words: int, calls: StreamCalls):
        self.voice = voice
        self.phrase_max_words = phrase_max_words  # 0: sentence and clause ends only
        self.calls = calls

    def new_state(self) -> SpeakerState:
        return SpeakerState()

    def step(self, state: SpeakerState, events: list[PipelineEvent]) -> list[SpeechSegment]:
        """The events of one recognition step: queue the committed words, speak what makes a phrase
        (everything, when the step ended an utterance)."""
        finals = [e for e in events if isinstance(e, TextSegment) and e.kind is TextKind.TRANSLATION_FINAL]
        for segment in finals:
            if not state.pending:
                state.span_start_s = segment.start_s
            state.pending += segment.text.split()
            state.span_end_s = segment.end_s
        ended = any(isinstance(e, UtteranceEnd) for e in events)
        if not (finals or ended):
            return []
        return self._speak(state, final=ended, source_received_s=events[-1].source_received_s)

    def flush(self, state: SpeakerState, source_received_s: float) -> list[SpeechSegment]:
        return self._speak(state, final=True, source_received_s=source_received_s)

    def _cut(self, state: SpeakerState, final: bool) -> int:
        """How many of the pending words to speak now."""
        words = state.pending
        if final:
            return len(words)
        limit = self.phrase_max_words
        cut = 0
        for i, w in enumerate(words, start=1):
            if PHRASE_END.search(w) or (limit and i >= 2 and CLAUSE_END.search(w)):
                cut = i
        first = FIRST_PHRASE_WORDS if state.spoken_s == 0.0 else limit
        if cut == 0 and limit and len(words) >= first:
            cut = len(words)
        return cut

    def _speak(self, state: SpeakerState, final: bool, source_received_s: float) -> list[SpeechSegment]:
        cut = self._cut(state, final) if state.pending else 0
        if cut == 0:
            return []
        phrase = " ".join(state.pending[:cut])
        state.pending = state.pending[cut:]
        audio = self.calls.run("tts", self.voice.synthesize, phrase)
        if len(audio) == 0:
            return []
        segment = SpeechSegment(audio, self.voice.sample_rate_hz, phrase, state.span_start_s, state.span_end_s,
                                source_received_s)
        state.spoken_s += segment.duration_s
        state.span_start_s = state.span_end_s
        return [segment]
