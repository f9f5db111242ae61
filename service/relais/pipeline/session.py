"""One stream: audio in, events out, through the stages in one direction.

    audio (16 kHz mono float32, any chunk size)
      -> VAD (Silero): 32 ms windows, each with the speech events it completed
      -> Recognizer (Whisper + simultaneous policy): partial and committed text
      -> Speaker (Piper, when the stream wants audio): translated speech per phrase
      -> events: text, speech, and the statistics the Summary is folded from

The session is given exactly its collaborators (the stages and the stream's door to
the model scheduler), never the engine. Each stage keeps its per-stream data in its
own State; the VAD state holds the stream's one window buffer. Because windows and
the hypothesis grid do not depend on chunking, the committed text is the same for
20 ms or 1 s chunks, and equals an offline run over the same schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from relais.pipeline.events import ComputeSpent, PipelineEvent
from relais.pipeline.recognizer import Recognizer
from relais.pipeline.scheduler import StreamCalls
from relais.pipeline.speaker import Speaker
from relais.runtime.vad import SileroVad


Emit = Callable[[list[PipelineEvent]], None]  # called from the session's worker thread


class StreamingSession:
    def __init__(self, vad: SileroVad, recognizer: Recognizer, speaker: Speaker | None, calls: StreamCalls):
        self.vad, self.recognizer, self.speaker, self.calls = vad, recognizer, speaker, calls
        self.vad_state = vad.new_state()
        self.recognizer_state = recognizer.new_state()
        self.speaker_state = speaker.new_state() if speaker is not None else None
        self.sample_rate_hz = vad.sample_rate_hz
        self._finished = False
        self._reported = (0.0, 0, 0.0)  # waited_s, steps, skipped_steps already in a ComputeSpent

    @property
    def shedding_exhausted(self) -> bool:
        """Whether it already decides as rarely as load shedding allows."""
        shedding = self.recognizer.settings.shedding
        return shedding is not None and self.recognizer_state.stretch >= shedding.max_stretch - 1e-9

    def push_audio(self, audio: np.ndarray, emit: Emit | None = None) -> list[PipelineEvent]:
        """Feed audio; return what it completed. With ``emit``, the events so far are handed to it as
        soon as text is recognised, before that text is synthesised: the listener reads it while
        the voice is still being computed. The order of all events is the same either way."""
        if self._finished:
            raise ValueError("audio after the end of the stream")
        self.calls.begin()
        events: list[PipelineEvent] = []
        for window in self.calls.run("vad", self.vad.windows, self.vad_state, audio):
            recognised = self.recognizer.step(self.recognizer_state, window)
            if recognised or self.speaker is None:
                events = self._recognised(events, recognised, emit)
            else:  # nothing new: words still waiting are spoken if playback is about to fall silent
                events += self.speaker.tick(self.speaker_state, window.end_sample / self.sample_rate_hz)
        return self._with_compute(events)

    def finish(self, emit: Emit | None = None) -> list[PipelineEvent]:
        """End of speech: close the open utterance and speak everything committed (``emit``: as in
        :meth:`push_audio`)."""
        if self._finished:
            return []
        self._finished = True
        self.calls.begin()
        tail = self.calls.run("vad", self.vad.flush_window, self.vad_state)
        events = self._recognised([], self.recognizer.flush(self.recognizer_state, tail), emit)
        if self.speaker is not None:
            events += self.speaker.flush(self.speaker_state, tail.end_sample / self.sample_rate_hz)
        return self._with_compute(events)

    def _recognised(self, events: list[PipelineEvent], recognised: list[PipelineEvent],
                    emit: Emit | None) -> list[PipelineEvent]:
        """``events`` followed by ``recognised`` and their speech (what is still to be returned)."""
        if self.speaker is None or not recognised:
            return events + recognised
        if emit is not None:
            emit(events + recognised)
            events = []
        else:
            events = events + recognised
        return events + self.speaker.step(self.speaker_state, recognised)

    def _with_compute(self, events: list[PipelineEvent]) -> list[PipelineEvent]:
        spent = self.calls.take_spent()
        state = self.recognizer_state
        now = (self.calls.waited_s, state.steps, state.skipped_steps)
        if not spent and now == self._reported:
            return events
        before, self._reported = self._reported, now
        return events + [ComputeSpent(spent, now[0] - before[0], now[1] - before[1], now[2] - before[2])]
