"""The recognition stage: VAD windows in, committed and partial text out.

Per utterance (a VAD speech run, cut at ``max_utterance_s``):
  every ``step_s`` of audio -> Whisper encodes the utterance so far (plus a little
  padding) and decodes greedily after the committed tokens -> the simultaneous
  policy commits the stable prefix (whole words).
At the end of the utterance the final hypothesis is committed in full, and its
tokens become the prompt context of the next utterance.

Hypotheses are due on a fixed grid of source time (window ends), so the committed
text does not depend on how the client chunked its audio. ``Recognizer`` holds the
shared model, the policy and the limits; everything per stream is in
``RecognizerState``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from relais.pipeline.events import (LanguageDetected, PipelineEvent, SpeechOnset, TextKind, TextSegment,
                                    UtteranceEnd)
from relais.pipeline.policy import PolicyState, SimultaneousPolicy
from relais.pipeline.scheduler import StreamCalls
from relais.runtime.vad import VadEvent, VadWindow
from relais.runtime.whisper import FRAMES_PER_S, DecodeResult, GreedyRequest, WhisperModel

log = logging.getLogger(__name__)

IDLE_KEEP_S = 2.0  # audio kept while no utterance is open (a VAD start reaches back < 1 s)


@dataclass(frozen=True)
class LoadShedding:
    """Deciding less often when the server is loaded, instead of falling behind.

    After each hypothesis step the stream looks at how long its model calls queued for the
    scheduler since the previous one, and at how far behind real time it is (``lag_s``: how long
    the oldest audio of the session call has been waiting, when the server says). Both past their
    bounds (``wait_high_s``, ``lag_high_s``) stretch the interval to the next hypothesis by
    ``factor`` (up to ``max_stretch`` x the profile's step); under half of either bound shrinks it
    back. While stretched, an utterance's final decode is greedy instead of the profile's beam
    search. A single stream on an idle server never queues, so its decode grid (and committed
    text) is the unloaded one; with ``lag_high_s`` > 0 neither does a stream that queues but keeps
    up, so a few streams that fit the machine keep their text (``lag_high_s`` 0: queueing alone)."""

    wait_high_s: float = 0.25
    factor: float = 1.5
    max_stretch: float = 3.0
    lag_high_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.wait_high_s > 0 and self.factor > 1 and self.max_stretch >= 1 and self.lag_high_s >= 0):
            raise ValueError(f"load shedding needs wait_high_s > 0, factor > 1, max_stretch >= 1, "
                             f"lag_high_s >= 0; got {self}")

    def next_stretch(self, stretch: float, waited_s: float, lag_s: float | None = None) -> float:
        """``lag_s`` None: not known (no server in front), judged on the queue wait alone."""
        behind = lag_s is None or lag_s > self.lag_high_s
        if waited_s > self.wait_high_s and behind:
            return min(self.max_stretch, stretch * self.factor)
        caught_up = lag_s is not None and lag_s < self.lag_high_s / 2
        if waited_s < self.wait_high_s / 2 or caught_up:
            return max(1.0, stretch / self.factor)
        return stretch


@dataclass(frozen=True)
class RecognizerSettings:
    task: str  # "translate" (to English) or "transcribe"
    source_language: str | None  # None: detect on the first utterance
    target_language: str
    step_s: float  # decode a new hypothesis every step_s of source audio
    max_utterance_s: float  # a longer run of speech is cut (bounded cost per step)
    encoder_pad_s: float  # silence appended to the audio the encoder sees
    context_tokens: int  # committed tokens of earlier utterances used as prompt
    language_detect_min_s: float = 3.0  # detect the language on at least this much speech
    final_beam_size: int = 1  # beam search for an utterance's final decode (1: greedy)
    step_beam_size: int = 1  # beam search for each hypothesis step (1: greedy, batched with other streams)
    first_step_s: float = 0.0  # step until an utterance's first commit (0: step_s); a short one starts text sooner
    shedding: LoadShedding | None = None  # None: always decide on the profile's grid


@dataclass
class Utterance:
    start: int  # first sample (absolute)
    next_step: int  # sample at which the next hypothesis is due
    committed_text: str = ""  # text of the policy's committed tokens
    hold_at: int | None = None  # committed length whose last word waits for its punctuation


@dataclass
class RecognizerState:
    policy: PolicyState
    language: str | None  # None until detected
    context: list[int] = field(default_factory=list)  # committed tokens of earlier utterances
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # samples from audio_start on
    audio_start: int = 0
    done: int = 0  # samples analysed so far (window ends)
    utterance: Utterance | None = None
    stretch: float = 1.0  # load shedding: step interval / the profile's
    steps: int = 0  # hypothesis steps run
    skipped_steps: float = 0.0  # steps the profile's grid asked for that load shedding skipped
    waited_mark: float = 0.0  # the stream's queue wait (StreamCalls.waited_s) at the last step


class Recognizer:
    def __init__(self, whisper: WhisperModel, policy: SimultaneousPolicy, settings: RecognizerSettings,
                 calls: StreamCalls, window_samples: int):
        self.whisper = whisper
        self.policy = policy
        self.settings = settings
        self.calls = calls
        self.window = window_samples
        self.rate_hz = whisper.sample_rate_hz
        self.step_samples = self._grid(settings.step_s)
        self.first_step_samples = self._grid(settings.first_step_s or settings.step_s)
        self.max_utt_samples = int(settings.max_utterance_s * self.rate_hz)

    def _grid(self, seconds: float) -> int:
        """``seconds`` as a whole number of VAD windows (at least one)."""
        return max(self.window, int(round(seconds * self.rate_hz / self.window)) * self.window)

    def new_state(self) -> RecognizerState:
        return RecognizerState(policy=self.policy.new_state(), language=self.settings.source_language)

    def step(self, state: RecognizerState, window: VadWindow) -> list[PipelineEvent]:
        """One analysed window: follow the VAD, and decode when a hypothesis is due."""
        self._append(state, window)
        events: list[PipelineEvent] = []
        for vad_event in window.events:
            events += self._on_vad(state, vad_event)
        utt = state.utterance
        if utt is not None:
            if state.done - utt.start >= self.max_utt_samples:
                log.debug("utterance reached %.1f s: cut", self.max_utt_samples / self.rate_hz)
                events += self._end_utterance(state, state.done)
                state.utterance = Utterance(start=state.done, next_step=state.done + self.first_step_samples)
            elif state.done >= utt.next_step:
                events += self._hypothesis_step(state, state.done)
                utt.next_step += self._next_interval(state)
        return events

    def _next_interval(self, state: RecognizerState) -> int:
        """Samples to the next hypothesis: the profile's step, stretched while calls queue."""
        nominal = self.step_samples if state.policy.committed else self.first_step_samples
        state.steps += 1
        shedding = self.settings.shedding
        if shedding is None:
            return nominal
        state.stretch = shedding.next_stretch(state.stretch, self.calls.waited_s - state.waited_mark,
                                              self.calls.lag())
        state.waited_mark = self.calls.waited_s
        interval = max(nominal, int(round(nominal * state.stretch / self.window)) * self.window)
        state.skipped_steps += interval / nominal - 1
        return interval

    def flush(self, state: RecognizerState, tail: VadWindow) -> list[PipelineEvent]:
        """End of the stream: the last partial window, then close the open utterance."""
        self._append(state, tail)
        events: list[PipelineEvent] = []
        for vad_event in tail.events:
            events += self._on_vad(state, vad_event)
        if state.utterance is not None:
            events += self._end_utterance(state, state.done)
        return events

    # -- audio and utterances -----------------------------------------------------
    def _append(self, state: RecognizerState, window: VadWindow) -> None:
        state.audio = np.concatenate([state.audio, window.audio])
        state.done = window.end_sample
        if state.utterance is None:  # nothing can reach back further than this
            drop = len(state.audio) - int(IDLE_KEEP_S * self.rate_hz)
            if drop > 0:
                state.audio = state.audio[drop:]
                state.audio_start += drop

    def _on_vad(self, state: RecognizerState, event: VadEvent) -> list[PipelineEvent]:
        if event.kind == "start":
            if state.utterance is None:
                state.utterance = Utterance(start=event.start_sample,
                                            next_step=event.start_sample + self.first_step_samples)
            return [SpeechOnset(event.start_s, self._seconds(state.done))]
        if state.utterance is None or event.end_sample is None:
            return []
        return self._end_utterance(state, max(event.end_sample, state.utterance.start + self.window))

    def _segment(self, state: RecognizerState, end: int) -> np.ndarray:
        start = state.utterance.start - state.audio_start
        return state.audio[max(start, 0): end - state.audio_start]

    def _seconds(self, samples: int) -> float:
        return samples / self.rate_hz

    # -- decoding -------------------------------------------------------------------
    def _decode(self, state: RecognizerState, end: int, final: bool,
                events: list[PipelineEvent]) -> DecodeResult | None:
        audio = self._segment(state, end)
        if len(audio) < self.window:
            return None
        if state.language is None and not final and len(audio) < self.settings.language_detect_min_s * self.rate_hz:
            return None  # too little speech to tell the language reliably: wait
        pad = len(audio) / self.rate_hz + self.settings.encoder_pad_s
        enc = self.calls.run("encoder", self.whisper.encode, audio, pad)
        if state.language is None:
            state.language, prob = self.calls.run("language", self.whisper.detect_language, enc)
            log.info("detected language %s (p=%.2f)", state.language, prob)
            events.append(LanguageDetected(state.language, prob, self._seconds(state.done)))
        prompt = self.whisper.prompt(self.settings.task, state.language, previous=state.context)
        committed = state.policy.committed
        beam = self.settings.final_beam_size if final else self.settings.step_beam_size
        if beam > 1 and state.stretch == 1.0:  # shedding load: greedy
            # A hypothesis step's beams are whole hypotheses: the policy commits from the best one.
            return self.calls.run("decoder", self.whisper.beam_search, enc, prompt + committed, beam,
                                  at_start=not committed, history=committed, peaks=not final)
        stop = None if final else self.policy.stop_frame(self.whisper.audio_frames(enc), state.policy)
        request = GreedyRequest(enc, prompt + committed, at_start=not committed, history=committed, stop_frame=stop)
        return self.calls.run_batched("decoder", self.whisper.greedy_batch, request)  # with other streams

    def _hypothesis_step(self, state: RecognizerState, end: int) -> list[PipelineEvent]:
        events: list[PipelineEvent] = []
        if not self.policy.ready(int((end - state.utterance.start) * FRAMES_PER_S / self.rate_hz), state.policy):
            return events  # too little audio for the policy to commit anything (AlignAtt): spare the decode
        result = self._decode(state, end, final=False, events=events)
        if result is None:
            return events
        self.policy.step(state.policy, result.tokens, result.peaks, result.audio_frames)
        events += self._commit(state, end)
        held = state.policy.committed[self._releasable(state, final=False):]
        tail = self.whisper.tokenizer.decode(held + state.policy.tail).strip()
        events.append(self._text(state, TextKind.TRANSLATION_PARTIAL, tail, end))
        return events

    def _end_utterance(self, state: RecognizerState, end: int) -> list[PipelineEvent]:
        events: list[PipelineEvent] = []
        result = self._decode(state, end, final=True, events=events)
        self.policy.flush(state.policy, result.tokens if result else [])
        events += self._commit(state, end, final=True)
        state.context = (state.context + state.policy.committed)[-self.settings.context_tokens:]
        self.policy.reset(state.policy)
        events.append(UtteranceEnd(self._seconds(state.utterance.start), self._seconds(end),
                                   self._seconds(state.done)))
        state.utterance = None
        # Drop audio no later utterance can need.
        state.audio = state.audio[end - state.audio_start:]
        state.audio_start = end
        return events

    def _commit(self, state: RecognizerState, end: int, final: bool = False) -> list[PipelineEvent]:
        utt = state.utterance
        committed = state.policy.committed
        text = self.whisper.tokenizer.decode(committed[: self._releasable(state, final)])
        delta = text[len(utt.committed_text):] if text.startswith(utt.committed_text) else text
        if not delta.strip():
            return []
        utt.committed_text = text
        events: list[PipelineEvent] = [self._text(state, TextKind.TRANSLATION_FINAL, delta.strip(), end)]
        if self.settings.task == "transcribe" and self.settings.target_language == state.language:
            events.append(self._text(state, TextKind.SOURCE_FINAL, delta.strip(), end))
        return events

    def _releasable(self, state: RecognizerState, final: bool) -> int:
        """How many committed tokens may leave as text. A commit may stop right before punctuation
        the hypotheses disagree on ("," or "."); the last word then waits until a token is committed
        after it (or the utterance ends), so no text piece ever starts with punctuation (clients
        join pieces with spaces)."""
        committed, tail, utt = state.policy.committed, state.policy.tail, state.utterance
        tok = self.whisper.tokenizer
        if final:
            return len(committed)
        if tail and tok.is_punctuation(tail[0]):
            utt.hold_at = len(committed)
        if utt.hold_at != len(committed):
            utt.hold_at = None
            return len(committed)
        i = len(committed) - 1
        while i > 0 and not tok.is_word_start(committed[i]):
            i -= 1
        return max(i, 0)

    def _text(self, state: RecognizerState, kind: TextKind, text: str, end: int) -> TextSegment:
        language = self.settings.target_language if "translation" in kind.value else (state.language or "")
        return TextSegment(kind, text, language, self._seconds(state.utterance.start), self._seconds(end),
                           self._seconds(state.done))
