"""One stream: audio in, committed text and translated speech out.

Audio is processed in fixed 32 ms VAD windows whatever the client's chunk size, and
hypotheses are decoded on a fixed grid of source time, so a stream gives the same
committed text whether it arrives in 20 ms or 1 s chunks (the computation-unaware
result equals the offline one for the same schedule).

Per utterance (a VAD speech run, cut at ``max_utterance_s``):
  every ``step_s`` of audio -> Whisper encodes the utterance so far (plus a little
  padding), decodes greedily after the committed tokens -> LocalAgreement-n commits
  the stable prefix (whole words) -> committed words are spoken phrase by phrase.
At the end of the utterance the final hypothesis is committed in full.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from relais.pipeline.events import PipelineEvent, SessionStats, SpeechSegment, TextKind, TextSegment
from relais.pipeline.policy import LocalAgreementPolicy

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"[.!?;:…](?:[\"')\]]*)\s*$")
FIRST_PHRASE_WORDS = 1  # the stream's first committed words are spoken at once
LANGUAGE_DETECT_MIN_S = 3.0  # auto-detect the source language on at least this much speech
CLAUSE_END = re.compile(r"[,.!?;:…](?:[\"')\]]*)\s*$")


@dataclass
class _Utterance:
    start: int  # first sample (absolute)
    next_step: int  # sample at which the next hypothesis is due
    committed_text: str = ""  # text of the policy's committed tokens
    language: str = ""


@dataclass
class _Speech:
    pending: list[str] = field(default_factory=list)  # committed words not yet spoken
    span_start_s: float = 0.0
    span_end_s: float = 0.0


class StreamingSession:
    def __init__(self, engine, cfg):
        self.engine = engine
        self.cfg = cfg
        self.whisper = engine.whisper
        self.vad = engine.vad
        self.tts = engine.voices[cfg.voice] if cfg.return_audio else None
        self.window = self.vad.window_samples
        self.sample_rate_hz = self.whisper.sample_rate_hz
        self.step_samples = max(self.window, int(round(cfg.latency.step_s * self.sample_rate_hz / self.window)) * self.window)
        self.max_utt_samples = int(engine.config.max_utterance_s * self.sample_rate_hz)
        self.vad_state = self.vad.new_state()
        tok = self.whisper.tokenizer
        self.policy = LocalAgreementPolicy(n=cfg.latency.agreement,
                                           is_word_start=lambda t: t < tok.eot and tok.token_text(t).startswith(" "))
        self.policy_state = self.policy.new_state()
        self.stats = SessionStats()
        self.language = cfg.source_language  # None until detected
        self.context: list[int] = []  # committed tokens of earlier utterances
        self._audio = np.zeros(0, np.float32)  # samples from _audio_start on
        self._audio_start = 0
        self._pending = np.zeros(0, np.float32)  # < one VAD window, not yet processed
        self._done = 0  # samples processed through VAD
        self._utt: _Utterance | None = None
        self._speech = _Speech()
        self._finished = False

    # -- public -----------------------------------------------------------------
    def push_audio(self, audio: np.ndarray) -> list[PipelineEvent]:
        if self._finished:
            raise ValueError("audio after the end of the stream")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self.stats.audio_in_s += len(audio) / self.sample_rate_hz
        self._audio = np.concatenate([self._audio, audio])
        buf = np.concatenate([self._pending, audio]) if len(self._pending) else audio
        events: list[PipelineEvent] = []
        n = len(buf) // self.window
        for i in range(n):
            events += self._process_window(buf[i * self.window:(i + 1) * self.window])
        self._pending = buf[n * self.window:].copy()
        return events

    def finish(self) -> list[PipelineEvent]:
        """End of speech: close the open utterance and speak everything committed."""
        if self._finished:
            return []
        self._finished = True
        events: list[PipelineEvent] = []
        if len(self._pending):
            self._done += len(self._pending)
        for ev in self._timed("vad", self.vad.flush, self.vad_state):
            events += self._on_vad(ev)
        if self._utt is not None:
            events += self._end_utterance(self._done)
        events += self._speak(final=True)
        return events

    # -- windows ----------------------------------------------------------------
    def _process_window(self, window: np.ndarray) -> list[PipelineEvent]:
        self._done += len(window)
        events: list[PipelineEvent] = []
        for ev in self._timed("vad", self.vad.step, self.vad_state, window):
            events += self._on_vad(ev)
        utt = self._utt
        if utt is not None:
            if self._done - utt.start >= self.max_utt_samples:
                log.debug("utterance reached %.1f s: cut", self.max_utt_samples / self.sample_rate_hz)
                events += self._end_utterance(self._done)
                self._utt = _Utterance(start=self._done, next_step=self._done + self.step_samples)
            elif self._done >= utt.next_step:
                utt.next_step += self.step_samples
                events += self._hypothesis_step(self._done)
        return events

    def _on_vad(self, ev) -> list[PipelineEvent]:
        if ev.kind == "start":
            if self.stats.speech_onset_s is None:
                self.stats.speech_onset_s = ev.start_s
            if self._utt is None:
                self._utt = _Utterance(start=ev.start_sample, next_step=ev.start_sample + self.step_samples)
            return []
        if self._utt is None:
            return []
        end = max(ev.end_sample, self._utt.start + self.window)
        events = self._end_utterance(end)
        return events

    # -- decoding ---------------------------------------------------------------
    def _segment(self, end: int) -> np.ndarray:
        start = self._utt.start - self._audio_start
        return self._audio[max(start, 0): end - self._audio_start]

    def _decode(self, end: int, final: bool = False):
        audio = self._segment(end)
        if len(audio) < self.window:
            return None
        if self.language is None and not final and len(audio) < LANGUAGE_DETECT_MIN_S * self.sample_rate_hz:
            return None  # too little speech to tell the language reliably: wait
        pad = len(audio) / self.sample_rate_hz + self.engine.config.encoder_pad_s
        enc = self._timed("encoder", self.whisper.encode, audio, pad)
        if self.language is None:
            self.language, prob = self.whisper.detect_language(enc)
            self.stats.detected_language = self.language
            log.info("detected language %s (p=%.2f)", self.language, prob)
        if self._utt.language == "":
            self._utt.language = self.language
        prompt = self.whisper.prompt(self.cfg.task, self.language, previous=self.context)
        committed = self.policy_state.committed
        return self._timed("decoder", self.whisper.greedy, enc, prompt + committed,
                            at_start=not committed, history=committed)

    def _hypothesis_step(self, end: int) -> list[PipelineEvent]:
        result = self._decode(end)
        if result is None:
            return []
        new = self.policy.step(self.policy_state, result.tokens)
        events = self._commit(new, end)
        if self.cfg.return_text:
            tail = self.whisper.tokenizer.decode(self.policy_state.history[-1] if self.policy_state.history else []).strip()
            events.append(self._text(self._partial_kind(), tail, end))
        return events + self._speak(final=False)

    def _end_utterance(self, end: int) -> list[PipelineEvent]:
        result = self._decode(end, final=True)
        new = self.policy.flush(self.policy_state, result.tokens if result else [])
        events = self._commit(new, end)
        self.context = (self.context + self.policy_state.committed)[-self.engine.config.context_tokens:]
        self.policy.reset(self.policy_state)
        self._utt = None
        # Drop audio no later utterance can need.
        drop = end - self._audio_start
        self._audio = self._audio[drop:]
        self._audio_start = end
        return events + self._speak(final=True)

    def _commit(self, new_tokens: list[int], end: int) -> list[PipelineEvent]:
        if not new_tokens:
            return []
        utt = self._utt
        text = self.whisper.tokenizer.decode(self.policy_state.committed)
        delta = text[len(utt.committed_text):] if text.startswith(utt.committed_text) else text
        utt.committed_text = text
        if not delta.strip():
            return []
        sep = " " if (self.stats.translation and not delta.startswith(" ")) else ""
        if self.cfg.task == "translate":
            self.stats.translation += (sep + delta) if self.stats.translation else delta.strip()
        else:
            self.stats.transcript += (sep + delta) if self.stats.transcript else delta.strip()
            self.stats.translation = self.stats.transcript
        words = delta.split()
        if not self._speech.pending:
            self._speech.span_start_s = utt.start / self.sample_rate_hz
        self._speech.pending += words
        self._speech.span_end_s = end / self.sample_rate_hz
        if not self.cfg.return_text:
            return []
        events = [self._text(self._final_kind(), delta.strip(), end, start=utt.start)]
        if self.cfg.task == "transcribe" and self.cfg.target_language == self.language:
            events.append(self._text(TextKind.SOURCE_FINAL, delta.strip(), end, start=utt.start))
        return events

    def _final_kind(self) -> TextKind:
        return TextKind.TRANSLATION_FINAL

    def _partial_kind(self) -> TextKind:
        return TextKind.TRANSLATION_PARTIAL

    def _text(self, kind: TextKind, text: str, end: int, start: int | None = None) -> TextSegment:
        start = self._utt.start if start is None and self._utt else (start or end)
        return TextSegment(kind, text, self.cfg.target_language if "translation" in kind.value else (self.language or ""),
                           start / self.sample_rate_hz, end / self.sample_rate_hz, self._done / self.sample_rate_hz)

    # -- speech -----------------------------------------------------------------
    def _speak(self, final: bool) -> list[PipelineEvent]:
        """Synthesise committed words at phrase boundaries (all of them when final)."""
        if self.tts is None or not self._speech.pending:
            return []
        words = self._speech.pending
        cut = len(words) if final else 0
        if not final:
            limit = self.cfg.latency.phrase_max_words
            for i, w in enumerate(words, start=1):
                if SENTENCE_END.search(w) or (limit and i >= 2 and CLAUSE_END.search(w)):
                    cut = i
            # The first phrase of a stream goes out early: time to first audio matters most.
            first = FIRST_PHRASE_WORDS if self.stats.audio_out_s == 0.0 else limit
            if cut == 0 and limit and len(words) >= first:
                cut = len(words)
        if cut == 0:
            return []
        phrase = " ".join(words[:cut])
        self._speech.pending = words[cut:]
        audio = self._timed("tts", self.tts.synthesize, phrase)
        if len(audio) == 0:
            return []
        self.stats.audio_out_s += len(audio) / self.tts.sample_rate_hz
        seg = SpeechSegment(audio, self.tts.sample_rate_hz, phrase, self._speech.span_start_s,
                            self._speech.span_end_s, self._done / self.sample_rate_hz)
        self._speech.span_start_s = self._speech.span_end_s
        return [seg]

    def _timed(self, stage: str, fn, *args, **kwargs):
        result, elapsed = self.engine.scheduler.run(stage, fn, *args, **kwargs)
        self.stats.compute_s += elapsed
        self.stats.stage_s[stage] = self.stats.stage_s.get(stage, 0.0) + elapsed
        return result
