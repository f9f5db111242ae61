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

import numpy as np

from relais.pipeline.events import ComputeSpent, PipelineEvent
from relais.pipeline.recognizer import Recognizer
from relais.pipeline.scheduler import StreamCalls
from relais.pipeline.speaker import Speaker
from relais.runtime.vad import SileroVad


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

    def push_audio(self, audio: np.ndarray) -> list[PipelineEvent]:
        """Feed audio; return what it completed."""
        if self._finished:
            raise ValueError("audio after the end of the stream")
        self.calls.begin()
        events: list[PipelineEvent] = []
        for window in self.calls.run("vad", self.vad.windows, self.vad_state, audio):
            recognised = self.recognizer.step(self.recognizer_state, window)
            if recognised or self.speaker is None:
                events += self._recognised(recognised)
            else:  # nothing new: words still waiting are spoken if playback is about to fall silent
                events += self.speaker.tick(self.speaker_state, window.end_sample / self.sample_rate_hz)
        return self._with_compute(events)

    def finish(self) -> list[PipelineEvent]:
        """End of speech: close the open utterance and speak everything committed."""
        if self._finished:
            return []
        self._finished = True
        self.calls.begin()
        tail = self.calls.run("vad", self.vad.flush_window, self.vad_state)
        events = self._recognised(self.recognizer.flush(self.recognizer_state, tail))
        if self.speaker is not None:
            events += self.speaker.flush(self.speaker_state, tail.end_sample / self.sample_rate_hz)
        return self._with_compute(events)

    def _recognised(self, events: list[PipelineEvent]) -> list[PipelineEvent]:
        if self.speaker is None or not events:
            return events
        return events + self.speaker.step(self.speaker_state, events)

    def _with_compute(self, events: list[PipelineEvent]) -> list[PipelineEvent]:
        spent = self.calls.take_spent()
        state = self.recognizer_state
        now = (self.calls.waited_s, state.steps, state.skipped_steps)
        if not spent and now == self._reported:
            return events
        before, self._reported = self._reported, now
        return events + [ComputeSpent(spent, now[0] - before[0], now[1] - before[1], now[2] - before[2])]
