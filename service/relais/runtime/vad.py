"""Streaming voice activity detection with Silero VAD (ONNX, no torch).

``SileroVad`` is shared and immutable; each stream owns a ``VadState``. Audio (16 kHz
mono float32, any chunk size) is cut into 32 ms windows; each window gets a speech
probability. A hysteresis state machine turns probabilities into speech segments:

* speech begins when a window reaches ``threshold``;
* it is confirmed (a ``start`` event) once it has lasted ``min_speech_ms``;
* it ends when the probability stays below ``neg_threshold`` for ``min_silence_ms``
  (an ``end`` event); probabilities between the two thresholds keep the current state.

Segment bounds sit on window edges, widened by ``speech_pad_ms`` (never overlapping
the previous segment, never before 0 or past the end of the audio). Because windows
do not depend on how the audio was chunked, a stream cut into 20 ms or 1 s chunks
gives exactly the same events, and ``speech_segments`` (offline) is the same machine
run over the whole clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relais.models.metadata import ModelFacts, session_metadata
from relais.runtime.ort import RuntimeConfig, create_session

log = logging.getLogger(__name__)

MODEL_FILE = "silero_vad.onnx"


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5  # probability at or above which a window is speech
    neg_threshold: float | None = None  # below this a window is silence; default threshold - 0.15
    min_speech_ms: int = 250  # shorter bursts are dropped
    min_silence_ms: int = 100  # a pause must last this long to end a segment
    speech_pad_ms: int = 30  # widen each segment by this much on both sides

    def __post_init__(self):
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"vad.threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"vad.neg_threshold must be in (0, threshold={self.threshold}], "
                             f"got {self.neg_threshold}")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"vad.{name} must be >= 0, got {getattr(self, name)}")
        # The end event is final when emitted; its padding must lie inside the silence
        # already observed, or a later window could need it back.
        if self.speech_pad_ms > self.min_silence_ms:
            raise ValueError(f"vad.speech_pad_ms ({self.speech_pad_ms}) must not exceed "
                             f"vad.min_silence_ms ({self.min_silence_ms})")

    @property
    def effective_neg_threshold(self) -> float:
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class SpeechSegment:
    start_sample: int  # at the model's sample rate, from the start of the stream
    end_sample: int
    sample_rate_hz: int

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        return self.end_sample / self.sample_rate_hz

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / self.sample_rate_hz


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" (speech confirmed) or "end" (segment closed)
    start_sample: int
    end_sample: int | None  # None on "start"
    sample_rate_hz: int

    @property
    def start_s(self) -> float:
        return self.start_sample / self.sample_rate_hz

    @property
    def end_s(self) -> float | None:
        return None if self.end_sample is None else self.end_sample / self.sample_rate_hz

    @property
    def segment(self) -> SpeechSegment | None:
        if self.end_sample is None:
            return None
        return SpeechSegment(self.start_sample, self.end_sample, self.sample_rate_hz)


@dataclass(frozen=True)
class VadWindow:
    """One analysed window: its samples, the stream position after it, the events it completed."""

    audio: np.ndarray  # the window's samples (the last one of a stream may be shorter)
    end_sample: int  # samples of the stream up to the end of this window
    events: list[VadEvent]


@dataclass
class VadState:
    """Per-stream data: model memory, unprocessed samples and the segmenter's state."""

    rnn_state: np.ndarray  # [2, 1, channels]
    context: np.ndarray  # last context_samples of the previous model input
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    samples_in: int = 0  # samples received so far
    windows_done: int = 0
    last_probability: float = 0.0
    # segmenter
    onset: int | None = None  # first sample of the current speech run (unpadded)
    confirmed: bool = False  # "start" event already emitted for the current run
    start_sample: int = 0  # padded start of the current run, once confirmed
    silence_from: int | None = None  # where the current pause began, within a run
    last_end: int = 0  # padded end of the previous segment
    finished: bool = False


class SileroVad:
    """Shared Silero VAD model; all per-stream data lives in ``VadState``."""

    def __init__(self, model: str | Path, config: VadConfig | None = None, runtime: RuntimeConfig | None = None):
        path = Path(model)
        if path.is_dir():
            path = path / MODEL_FILE
        # A tiny recurrent model run on 32 ms windows: extra threads only add overhead.
        # On the CPU even on a GPU host: one call per 32 ms frame is all launch and copy overhead on a GPU
        # (2.2 ms a call on an H200 against 0.55 ms on one EPYC core; docs/benchmarks.md, "On a GPU").
        self.loaded = create_session(path, runtime or RuntimeConfig(providers=("cpu",), intra_op_threads=1))
        self.facts: ModelFacts = session_metadata(self.loaded.session, self.loaded.path)
        if self.facts.require("model_type") != "silero_vad":
            raise ValueError(f"{path} is a {self.facts.get('model_type')!r} model, not silero_vad")
        self.sample_rate_hz = self.facts.int("sample_rate_hz")
        self.window_samples = self.facts.int("window_samples")
        self.context_samples = self.facts.int("context_samples")
        shape = self.facts.require("state_shape")
        self.state_shape = tuple(1 if d == "batch" else int(d) for d in shape)
        self.config = config or VadConfig()

    # -- model ------------------------------------------------------------------
    def new_state(self) -> VadState:
        return VadState(rnn_state=np.zeros(self.state_shape, np.float32),
                        context=np.zeros(self.context_samples, np.float32))

    def _window_probability(self, state: VadState, window: np.ndarray) -> float:
        x = np.concatenate([state.context, window])[None]
        prob, state.rnn_state = self.loaded.run(None, {
            "input": x, "state": state.rnn_state, "sr": np.array(self.sample_rate_hz, np.int64),
        })
        state.context = x[0, -self.context_samples:]
        return float(prob[0, 0])

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every 32 ms window of a whole clip (last one zero-padded)."""
        audio = _as_mono_float32(audio)
        state = self.new_state()
        n = -(-len(audio) // self.window_samples)
        padded = np.zeros(n * self.window_samples, np.float32)
        padded[: len(audio)] = audio
        return np.array([self._window_probability(state, w)
                         for w in padded.reshape(n, self.window_samples)], np.float32)

    # -- streaming ----------------------------------------------------------------
    def windows(self, state: VadState, audio: np.ndarray) -> list[VadWindow]:
        """Feed a chunk of 16 kHz mono float32 audio (any size); return every window it completes.

        ``state.pending`` is the stream's one window buffer: samples short of a window wait
        there for the next chunk, so results do not depend on how the audio was chunked.
        """
        if state.finished:
            raise ValueError("this VadState was flushed; start a new one with new_state()")
        audio = _as_mono_float32(audio)
        state.samples_in += len(audio)
        buf = np.concatenate([state.pending, audio]) if len(state.pending) else audio
        n = len(buf) // self.window_samples
        out: list[VadWindow] = []
        for i in range(n):
            window = buf[i * self.window_samples:(i + 1) * self.window_samples]
            events = self._advance(state, self._window_probability(state, window))
            out.append(VadWindow(window, state.windows_done * self.window_samples, events))
        state.pending = buf[n * self.window_samples:].copy()
        return out

    def flush_window(self, state: VadState) -> VadWindow:
        """End of stream: the last partial window (its real samples only) and the closing events."""
        if state.finished:
            return VadWindow(np.zeros(0, np.float32), state.samples_in, [])
        tail = state.pending
        events: list[VadEvent] = []
        if len(tail):
            window = np.zeros(self.window_samples, np.float32)
            window[: len(tail)] = tail
            state.pending = np.zeros(0, np.float32)
            events += self._advance(state, self._window_probability(state, window))
        if state.onset is not None:
            end = state.silence_from if state.silence_from is not None else state.samples_in
            events += self._close(state, end, end_limit=state.samples_in)
        state.finished = True
        return VadWindow(tail, state.samples_in, events)

    def step(self, state: VadState, audio: np.ndarray) -> list[VadEvent]:
        """Feed a chunk (any size); return the events it completes."""
        return [e for w in self.windows(state, audio) for e in w.events]

    def flush(self, state: VadState) -> list[VadEvent]:
        """End of stream: process the last partial window and close an open segment."""
        return self.flush_window(state).events

    def speech_segments(self, audio: np.ndarray) -> list[SpeechSegment]:
        """Offline: the segments of a whole clip (the streaming machine, run once)."""
        state = self.new_state()
        events = self.step(state, audio) + self.flush(state)
        return [e.segment for e in events if e.kind == "end"]

    # -- segmenter --------------------------------------------------------------
    def _ms(self, ms: int) -> int:
        return ms * self.sample_rate_hz // 1000

    def _advance(self, state: VadState, prob: float) -> list[VadEvent]:
        cfg = self.config
        begin = state.windows_done * self.window_samples
        end = begin + self.window_samples
        state.windows_done += 1
        state.last_probability = prob
        events: list[VadEvent] = []
        if state.onset is None:
            if prob < cfg.threshold:
                return events
            state.onset, state.silence_from, state.confirmed = begin, None, False
        elif prob >= cfg.threshold:
            state.silence_from = None
        elif prob < cfg.effective_neg_threshold and state.silence_from is None:
            state.silence_from = begin

        if state.silence_from is not None and end - state.silence_from >= self._ms(cfg.min_silence_ms):
            return self._close(state, state.silence_from, end_limit=end)
        if not state.confirmed and state.silence_from is None and end - state.onset >= self._ms(cfg.min_speech_ms):
            state.confirmed = True
            state.start_sample = max(state.onset - self._ms(cfg.speech_pad_ms), state.last_end, 0)
            events.append(VadEvent("start", state.start_sample, None, self.sample_rate_hz))
        return events

    def _close(self, state: VadState, speech_end: int, end_limit: int) -> list[VadEvent]:
        """End the current run at ``speech_end`` (unpadded); emit it if long enough."""
        cfg = self.config
        events: list[VadEvent] = []
        long_enough = speech_end - state.onset >= self._ms(cfg.min_speech_ms)
        if state.confirmed or long_enough:
            if not state.confirmed:  # confirmed only now (e.g. at flush): emit its start too
                state.start_sample = max(state.onset - self._ms(cfg.speech_pad_ms), state.last_end, 0)
                events.append(VadEvent("start", state.start_sample, None, self.sample_rate_hz))
            end = min(speech_end + self._ms(cfg.speech_pad_ms), end_limit, state.samples_in)
            end = max(end, state.start_sample)
            events.append(VadEvent("end", state.start_sample, end, self.sample_rate_hz))
            state.last_end = end
        state.onset, state.silence_from, state.confirmed = None, None, False
        return events


def _as_mono_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"VAD input must be mono 1-D audio, got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"VAD input must be float audio in [-1, 1], got {audio.dtype}")
    return audio.astype(np.float32, copy=False)
