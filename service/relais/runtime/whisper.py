"""Whisper speech recogniser/translator over the exported ONNX encoder + cached decoder.

One ``WhisperModel`` is shared (immutable) by all streams; every call takes the
per-call data it needs. The model's facts (layers, token ids, sample rate) come from
the ONNX metadata written by the exporter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relais.models.metadata import ModelFacts, session_metadata
from relais.runtime.mel import LogMel
from relais.runtime.ort import RuntimeConfig, create_session
from relais.runtime.tokenizer import WhisperTokenizer

log = logging.getLogger(__name__)

TASKS = ("transcribe", "translate")
# Decoding guards against Whisper's hallucination loops, which appear mostly when the
# encoder sees less than its 30 s training window: stop once the output repeats a
# span of at least MIN_REPEAT_TOKENS tokens back to back, or a shorter one of at least
# MIN_LOOP_TOKENS tokens three times ("and a front and a front and a front": people do say
# a few words twice, hardly three times), and never emit more than MAX_TOKENS_PER_S per
# second of audio (+ a small allowance).
MIN_REPEAT_TOKENS = 5
MIN_LOOP_TOKENS = 2
MAX_TOKENS_PER_S = 12.0
TOKEN_ALLOWANCE = 10


def tail_loop(tokens: list[int], min_span: int = MIN_REPEAT_TOKENS, min_loop: int = MIN_LOOP_TOKENS) -> tuple[int, int]:
    """The loop ``tokens`` ends in, as (its span, how many tokens at the end repeat what came just
    before them, so that dropping them leaves one copy): a span of at least ``min_span`` tokens the
    sequence ends with twice in a row, or a shorter one of at least ``min_loop`` tokens it ends with
    three times (twice its length dropped); (0, 0) if none."""
    n = len(tokens)
    for span in range(min_loop, min(min_span, n // 3 + 1)):
        if tokens[n - span:] == tokens[n - 2 * span:n - span] == tokens[n - 3 * span:n - 2 * span]:
            return span, 2 * span
    for span in range(min_span, n // 2 + 1):
        if tokens[n - span:] == tokens[n - 2 * span:n - span]:
            return span, span
    return 0, 0


def repeated_tail(tokens: list[int], min_span: int = MIN_REPEAT_TOKENS, min_loop: int = MIN_LOOP_TOKENS) -> int:
    """How many tokens at the end of ``tokens`` are a loop's extra copies (see :func:`tail_loop`)."""
    return tail_loop(tokens, min_span, min_loop)[1]


def loop_cut(history: list[int], out: list[int], floor: int = 0) -> int | None:
    """Where to cut ``out`` (a decode's tokens after the committed ``history``) so that a loop it
    ends in keeps one copy: only ``out``'s own tokens from ``floor`` on go; None if no loop."""
    repeat = repeated_tail(history + out)
    return max(floor, len(out) - repeat) if repeat else None


def drop_loops(history: list[int], out: list[int]) -> list[int]:
    """``out`` (a finished decode's tokens after the committed ``history``) without the extra copies
    of every loop (see :func:`tail_loop`) that completes inside it, keeping what follows the loop:
    "and a wall, a wall, a wall, a 17 person" reads "and a wall, a 17 person". Only whole copies
    go (one left unfinished at the end goes too), and only ``out``'s tokens. For a beam search's
    winner, in which a loop in the middle was not stopped token by token as a greedy decode's is."""
    seq = list(history)  # history + the tokens of out kept so far
    span = 0  # > 0: inside a loop of that period
    pending: list[int] = []  # tokens going on with the loop (fewer than span); a whole copy is dropped
    for token in out:
        if span:
            if token == seq[len(pending) - span]:  # (seq + pending)[-span]
                pending = [] if len(pending) + 1 == span else pending + [token]
                continue
            seq += pending
            span, pending = 0, []
        seq.append(token)
        span, repeat = tail_loop(seq)
        mine = min(repeat, len(seq) - len(history))
        if mine:
            pending = seq[len(seq) - mine:len(seq) - mine + mine % span]
            del seq[len(seq) - mine:]
    return seq[len(history):]


# Whisper sometimes finishes a translation and starts it over ("The building is heated to the air
# panel. The building is heated to the solar panels."), most often at the end of a short utterance
# followed by the encoder's padding. A decode is cut at a sentence end when the next sentence opens
# with the same RESTART_WORDS words as the utterance's text (the committed ``history`` + the output),
# or when all that follows it repeats the words just before it (at least RESTART_WORDS of them).
RESTART_WORDS = 2
SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")
_WORD = re.compile(r"\w[\w']*")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def restart_at(tokenizer: WhisperTokenizer, history: list[int], out: list[int]) -> int | None:
    """Index in ``out`` where a sentence begins that restarts the utterance (see RESTART_WORDS), or
    that only echoes the words right before it and ends the decode ("...the race after the
    marriage. After the marriage."); None if there is none."""
    for i in range(1, len(out)):
        if not tokenizer.token_text(out[i - 1]).rstrip().endswith(SENTENCE_ENDS):
            continue
        before = _words(tokenizer.decode(history + out[:i]))
        rest = _words(tokenizer.decode(out[i:]))
        opening = before[:RESTART_WORDS]
        if len(opening) == RESTART_WORDS and rest[:RESTART_WORDS] == opening:
            return i
        if len(rest) >= RESTART_WORDS and before[-len(rest):] == rest:
            return i
    return None


MIN_ALIGNMENT_ROWS = 4  # fewer tokens than this give no usable per-frame statistics
PEAK_SMOOTHING_FRAMES = 5
_PEAK_KERNEL = np.ones(PEAK_SMOOTHING_FRAMES) / PEAK_SMOOTHING_FRAMES
# A decode stopped at the AlignAtt border goes on this many tokens: the peaks are z-scores across
# the hypothesis's tokens, and without the tokens after the border the earlier ones' peaks drift
# late (stopping at the border itself cost 0.35 s of LAAL and 0.9 BLEU on fr_en_dev; 4 more
# tokens kept both and saved 10 % of the compute; 2 or 8 were worse: docs/benchmarks.md).
STOP_LOOKAHEAD = 4


def attention_peaks(rows: np.ndarray) -> list[int]:
    """Per token, the encoder frame it attends to most, from the alignment heads' averaged
    cross-attention ``rows`` [tokens, frames].

    The raw argmax is useless: a few frames (near the start of the audio) draw attention
    from every token. As in Whisper's word timing, each frame is normalised across the
    tokens (z-score), which leaves what is specific to each token, then smoothed along
    time. With fewer than MIN_ALIGNMENT_ROWS tokens there are no statistics: every peak is
    put past the last frame (the policy then commits nothing yet)."""
    if len(rows) < MIN_ALIGNMENT_ROWS:
        return [rows.shape[1] if rows.ndim == 2 else 0] * len(rows)
    z = (rows - rows.mean(axis=0)) / (rows.std(axis=0) + 1e-6)
    smooth = np.stack([np.convolve(r, _PEAK_KERNEL, mode="same") for r in z])
    return [int(i) for i in smooth.argmax(axis=1)]


def last_peak(rows: np.ndarray) -> int:
    """:func:`attention_peaks` of the last row only (the same statistics, one row's work)."""
    if len(rows) < MIN_ALIGNMENT_ROWS:
        return rows.shape[1]
    z = (rows[-1] - rows.mean(axis=0)) / (rows.std(axis=0) + 1e-6)
    return int(np.convolve(z, _PEAK_KERNEL, mode="same").argmax())


def history_rows(alignment: np.ndarray, prompt: list[int], history: list[int]) -> list[np.ndarray]:
    """The alignment rows of the committed ``history`` tokens that end ``prompt``, from a decoder call
    over the prompt (``alignment`` [positions, frames]): the row of the query that chose a token sits
    one position before it. The statistics of :func:`attention_peaks` include them."""
    k = min(len(history), len(prompt) - 1)
    return list(alignment[len(prompt) - 1 - k: len(prompt) - 1])


@dataclass
class EncodedAudio:
    cross_k: np.ndarray  # [layers, batch, heads, audio_ctx, head_dim]
    cross_v: np.ndarray
    duration_s: float  # audio actually present (padding excluded)


FRAMES_PER_S = 50  # encoder frames per second of audio (10 ms mel hop, stride-2 convolution)


@dataclass
class DecodeResult:
    tokens: list[int]  # generated tokens, without prompt and eot
    text: str
    ended: bool  # True when the model emitted end-of-text (not cut by max length)
    avg_logprob: float = 0.0
    token_logprobs: list[float] = field(default_factory=list)
    # Per token: the encoder frame its alignment heads attended to most when it was chosen
    # (empty for exports without the alignment output).
    peaks: list[int] = field(default_factory=list)
    audio_frames: int = 0  # encoder frames that hold audio (the rest is padding)


@dataclass
class DecoderStep:
    logits: np.ndarray  # [batch, vocab] of the last position
    self_k: np.ndarray
    self_v: np.ndarray
    alignment: np.ndarray | None  # [batch, n, audio_ctx]: alignment heads' cross-attention, averaged


@dataclass
class GreedyRequest:
    """The arguments of one :meth:`WhisperModel.greedy` decode (see there)."""

    enc: EncodedAudio
    prompt: list[int]
    max_new_tokens: int | None = None
    forced: list[int] | None = None
    stop_on_repeat: bool = True
    at_start: bool = True
    history: list[int] | None = None
    stop_frame: int | None = None


def _stack_rows(arrays: list[np.ndarray], steps: int) -> np.ndarray:
    """K/V arrays [layers, 1, heads, <= steps, head_dim] of several rows as one [layers, rows, heads,
    steps, head_dim], each zero-padded after its own steps (one row: itself, no copy)."""
    if len(arrays) == 1 and arrays[0].shape[3] == steps:
        return arrays[0]
    out = np.zeros((arrays[0].shape[0], len(arrays), arrays[0].shape[2], steps, arrays[0].shape[4]), arrays[0].dtype)
    for b, a in enumerate(arrays):
        out[:, b:b + 1, :, : a.shape[3]] = a
    return out


class WhisperModel:
    def __init__(self, model_dir: str | Path, precision: str = "fp32", runtime: RuntimeConfig | None = None,
                 encoder_precision: str | None = None):
        """``precision`` names the decoder's graph, and the encoder's unless ``encoder_precision`` is given
        (the two are separate graphs that exchange float32 K/V, so any pair works)."""
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        self.precision = precision
        self.encoder_precision = encoder_precision or precision
        self.encoder = create_session(model_dir / f"encoder.{self.encoder_precision}.onnx", runtime)
        self.decoder = create_session(model_dir / f"decoder.{precision}.onnx", runtime)
        self.facts: ModelFacts = session_metadata(self.decoder.session, self.decoder.path)
        f = self.facts
        self.n_mels = f.int("n_mels")
        self.sample_rate_hz = f.int("sample_rate_hz")
        self.max_frames = f.int("max_frames")
        self.n_text_ctx = f.int("n_text_ctx")
        self.layers = f.int("decoder_layers")
        self.heads = f.int("decoder_heads")
        self.head_dim = f.int("d_model") // self.heads
        self.multilingual = bool(f.require("multilingual"))
        self.eot, self.sot = f.int("eot"), f.int("sot")
        self.no_timestamps = f.int("no_timestamps")
        self.sot_prev = f.int("sot_prev")
        self.lang_ids: dict[str, int] = dict(f.get("lang_ids", {}))
        self.suppress = np.array(sorted(set(f.get("suppress_ids", []))), dtype=np.int64)
        self.suppress_begin = np.array(sorted(set(f.get("suppress_ids_begin", []))), dtype=np.int64)
        self.task_ids = {"transcribe": f.int("transcribe"), "translate": f.int("translate")}
        self.mel = LogMel(np.load(model_dir / "mel_filters.npy"), f.int("n_fft"), f.int("hop_length"))
        self.tokenizer = WhisperTokenizer(model_dir / "tokenizer.json", self.eot)
        self.provider = self.decoder.provider
        # Exports since the AlignAtt policy carry the alignment heads' attention as an output.
        self.has_alignment = "alignment" in self.decoder.output_names
        # Exports since cross-stream batching take per-row offsets and audio lengths (greedy_batch).
        self.batches_rows = "cross_len" in self.decoder.input_names

    @property
    def precision_label(self) -> str:
        """``int8``, or ``fp32 encoder + int8 decoder`` when the two graphs differ."""
        if self.encoder_precision == self.precision:
            return self.precision
        return f"{self.encoder_precision} encoder + {self.precision} decoder"

    # -- prompt -----------------------------------------------------------------
    def prompt(self, task: str = "transcribe", language: str | None = None, previous: list[int] | None = None) -> list[int]:
        """Decoder prompt: [<|startofprev|> previous...] <|sot|> [lang task] <|notimestamps|>."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        ids: list[int] = []
        if previous:
            # Keep the prompt within half the text context, as Whisper was trained.
            ids = [self.sot_prev, *previous[-(self.n_text_ctx // 2 - 1):]]
        ids.append(self.sot)
        if self.multilingual:
            if language is None:
                raise ValueError("a multilingual model needs a source language (or detect_language first)")
            if language not in self.lang_ids:
                raise ValueError(f"unsupported language {language!r}; supported: {sorted(self.lang_ids)}")
            ids += [self.lang_ids[language], self.task_ids[task]]
        elif task == "translate" or (language not in (None, "en")):
            raise ValueError("this English-only model can only transcribe English (task=transcribe, language=en)")
        ids.append(self.no_timestamps)
        return ids

    # -- encoder ----------------------------------------------------------------
    def features(self, audio: np.ndarray, pad_to_s: float | None = None) -> np.ndarray:
        """Log-mel [n_mels, frames] with an even frame count, at most ``max_frames``."""
        max_samples = self.max_frames * self.mel.hop_length
        if len(audio) > max_samples:
            raise ValueError(f"audio longer than {max_samples / self.sample_rate_hz:.0f} s; split it first")
        pad = int(round(pad_to_s * self.sample_rate_hz)) if pad_to_s else 0
        mel = self.mel(audio, pad_to_samples=min(max(pad, 0), max_samples))
        if mel.shape[1] % 2:
            mel = np.pad(mel, ((0, 0), (0, 1)), constant_values=mel.min())
        return mel[:, : self.max_frames]

    def encode(self, audio: np.ndarray, pad_to_s: float | None = None) -> EncodedAudio:
        """Encode 16 kHz mono audio; ``pad_to_s`` zero-pads (30 = Whisper's own window)."""
        mel = self.features(audio, pad_to_s)[None]
        cross_k, cross_v = self.encoder.run(None, {"mel": mel})
        return EncodedAudio(cross_k, cross_v, len(audio) / self.sample_rate_hz)

    # -- decoder ----------------------------------------------------------------
    def empty_cache(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.layers, batch, self.heads, 0, self.head_dim)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    def step(self, tokens: np.ndarray, offset: int | np.ndarray, self_k, self_v, enc: EncodedAudio,
             cross_len: np.ndarray | None = None) -> DecoderStep:
        """One decoder call: ``tokens`` [batch, n] at positions ``offset``.. after the cached ``self_k/v``.
        With rows of several streams (:meth:`greedy_batch`), ``offset`` [batch] gives each row's position
        (its cache holds that many real positions, then padding) and ``cross_len`` [batch] the encoder
        frames of ``enc`` that hold its audio."""
        rows = np.atleast_1d(np.asarray(offset, dtype=np.int64))
        feeds = {"tokens": tokens.astype(np.int64), "offset": rows, "self_k": self_k, "self_v": self_v,
                 "cross_k": enc.cross_k, "cross_v": enc.cross_v}
        if self.batches_rows:
            feeds["cross_len"] = (np.array([enc.cross_k.shape[3]], np.int64) if cross_len is None
                                  else np.asarray(cross_len, np.int64))
        elif len(rows) > 1 or cross_len is not None:
            raise self._no_rows_error()
        outputs = self.decoder.run(None, feeds)
        named = dict(zip(self.decoder.output_names, outputs))
        return DecoderStep(named["logits"], named["new_self_k"], named["new_self_v"], named.get("alignment"))

    def _no_rows_error(self) -> ValueError:
        return ValueError(f"{self.decoder.path}: this export predates per-row decoder inputs; re-export the "
                          f"model (relais models prepare) to batch streams")

    def decode_step(self, tokens: np.ndarray, offset: int, self_k, self_v, enc: EncodedAudio):
        """(logits, self_k, self_v) of :meth:`step`."""
        out = self.step(tokens, offset, self_k, self_v, enc)
        return out.logits, out.self_k, out.self_v

    def greedy(self, enc: EncodedAudio, prompt: list[int], max_new_tokens: int | None = None,
               forced: list[int] | None = None, stop_on_repeat: bool = True,
               at_start: bool = True, history: list[int] | None = None,
               stop_frame: int | None = None) -> DecodeResult:
        """Greedy decoding with the KV cache. ``forced`` tokens are fed before free decoding
        (their log-probs are still recorded). ``at_start`` applies Whisper's first-token
        suppression (blank, end-of-text); pass False when the prompt already ends with
        committed text tokens; ``history`` (those committed tokens) lets the loop guard
        catch output that repeats text already committed. With an alignment output, each
        token's attention peak is computed (:func:`attention_peaks`) for AlignAtt, and
        ``stop_frame`` ends the decode (not ``ended``) STOP_LOOKAHEAD tokens after the first
        one whose peak, over the tokens so far, reaches that frame: AlignAtt commits nothing
        from there on, so decoding further would only feed the partial text."""
        request = GreedyRequest(enc, prompt, max_new_tokens, forced, stop_on_repeat, at_start, history, stop_frame)
        return self.greedy_batch([request])[0]

    def greedy_batch(self, requests: list[GreedyRequest]) -> list[DecodeResult]:
        """:meth:`greedy` for several decodes (of different streams) at once: each prompt is run on its
        own, then every token step of the rows still decoding is one decoder call, padded and masked
        so that each row gets the tokens it gets alone. Needs an export with per-row inputs for more
        than one request (``batches_rows``)."""
        if len(requests) > 1 and not self.batches_rows:
            raise self._no_rows_error()
        rows = [_GreedyRow(self, r) for r in requests]
        live = [row for row in rows if row.start()]
        if not live:
            return [row.result() for row in rows]
        # One cache for the live rows: row b holds its real positions at [0, position) and padding
        # after them (masked by the graph); cross K/V padded after each row's frames, likewise.
        past = max(row.position for row in live)
        frames = max(row.frames for row in live)
        self_k = _stack_rows([row.self_k for row in live], past)
        self_v = _stack_rows([row.self_v for row in live], past)
        enc = EncodedAudio(_stack_rows([row.enc.cross_k for row in live], frames),
                           _stack_rows([row.enc.cross_v for row in live], frames), 0.0)
        while live:
            step = self.step(np.array([[row.tokens[-1]] for row in live]),
                             np.array([row.position for row in live], np.int64), self_k, self_v, enc,
                             cross_len=np.array([row.frames for row in live], np.int64) if self.batches_rows else None)
            past, self_k, self_v = self_k.shape[3], step.self_k, step.self_v
            going = []
            for b, row in enumerate(live):
                if row.position < past:  # the new key went to index `past`: move it after the row's own
                    self_k[:, b, :, row.position] = self_k[:, b, :, past]
                    self_v[:, b, :, row.position] = self_v[:, b, :, past]
                going.append(row.advance(step.logits[b],
                                         None if step.alignment is None else step.alignment[b, -1, :row.frames]))
            if not all(going):  # rows that ended leave the call
                keep = [b for b, ok in enumerate(going) if ok]
                live = [live[b] for b in keep]
                past = max((row.position for row in live), default=0)  # the longest row left has no padding
                frames = max((row.frames for row in live), default=0)
                self_k, self_v = self_k[:, keep, :, :past], self_v[:, keep, :, :past]
                enc = EncodedAudio(enc.cross_k[:, keep, :, :frames], enc.cross_v[:, keep, :, :frames], 0.0)
        return [row.result() for row in rows]

    def beam_search(self, enc: EncodedAudio, prompt: list[int], beam_size: int = 5,
                    max_new_tokens: int | None = None, at_start: bool = True,
                    history: list[int] | None = None, guards: bool = True, peaks: bool = False) -> DecodeResult:
        """Beam search (one batched decoder call per step over the live beams), as Whisper does
        it: a beam ends at end-of-text; once ``beam_size`` have ended, the best by mean
        log-probability per token wins. ``beam_size`` 1 is :meth:`greedy`. ``guards`` False: the
        output is what the model said, loops and restarts included (the token limit still holds).
        ``peaks``: the winner's attention peaks too, for AlignAtt. Every beam is decoded to its end:
        ranked on what they say by the AlignAtt border, beams chose no better than greedy did
        (docs/benchmarks.md, "Beam search for the hypotheses AlignAtt commits from")."""
        if beam_size <= 1:
            return self.greedy(enc, prompt, max_new_tokens, stop_on_repeat=guards, at_start=at_start,
                               history=history)
        max_new = self._token_limit(enc, prompt, max_new_tokens)
        self_k, self_v = self.empty_cache()
        step = self.step(np.array([prompt]), 0, self_k, self_v, enc)
        track = peaks and step.alignment is not None
        base = history_rows(step.alignment[0], prompt, history or []) if track else []
        beams = [_Beam([], 0.0, [])]
        finished: list[_Beam] = []
        wide: EncodedAudio | None = None
        for t in range(max_new):
            scores = np.array(step.logits, np.float32)
            scores[:, self.suppress] = -np.inf
            if t == 0 and at_start:
                scores[:, self.suppress_begin] = -np.inf
            # Log-probabilities of each beam's best beam_size + 1 tokens only (the whole vocabulary's
            # in float64, and a full sort per beam, were a third of a step's time).
            m = scores.max(axis=1, keepdims=True)
            log_total = np.log(np.exp(scores - m).sum(axis=1, dtype=np.float64))
            top = np.argpartition(-scores, beam_size, axis=1)[:, : beam_size + 1]
            candidates = []
            for b, beam in enumerate(beams):
                for token in top[b]:
                    logp = float(scores[b, token]) - float(m[b, 0]) - float(log_total[b])
                    candidates.append((beam.total + logp, b, int(token)))
            candidates.sort(key=lambda c: -c[0])
            kept: list[tuple[int, int, float]] = []
            for total, b, token in candidates:  # best first, down to the last beam kept (Whisper's rule):
                if token == self.eot:  # an ending that ranks below every kept beam is not a candidate
                    if len(finished) < beam_size:
                        finished.append(_Beam(beams[b].tokens, total, beams[b].rows, ended=True))
                else:
                    kept.append((b, token, total))
                    if len(kept) == beam_size:
                        break
            if len(finished) >= beam_size or not kept:
                break
            rows = np.array([b for b, _, _ in kept])
            beams = [_Beam(beams[b].tokens + [token], total,
                           beams[b].rows + [step.alignment[b, -1]] if track else []) for b, token, total in kept]
            if wide is None or wide.cross_k.shape[1] != len(kept):
                wide = EncodedAudio(np.repeat(enc.cross_k, len(kept), axis=1),
                                    np.repeat(enc.cross_v, len(kept), axis=1), enc.duration_s)
            step = self.step(np.array([[beam.tokens[-1]] for beam in beams]), len(prompt) + t,
                             step.self_k[:, rows], step.self_v[:, rows], wide)
        best = max(finished or beams, key=lambda c: c.total / max(1, len(c.tokens) + int(c.ended)))
        tokens = list(best.tokens)
        if guards:
            tokens = drop_loops(history or [], tokens)
            if (cut := restart_at(self.tokenizer, history or [], tokens)) is not None:
                del tokens[cut:]
        avg = best.total / max(1, len(tokens) + int(best.ended))
        if not track:  # not asked for, or an export without the alignment output
            winner_peaks: list[int] = []
        elif tokens == best.tokens[: len(tokens)]:  # cut at most: the tracked rows still fit
            winner_peaks = attention_peaks(np.array(base + best.rows[: len(tokens)]))[len(base):]
        else:  # a loop dropped from the middle: one decoder call over the result
            winner_peaks = self.peaks_of(enc, prompt, history or [], tokens)
        return DecodeResult(tokens, self.tokenizer.decode(tokens).strip(), best.ended, avg, [], winner_peaks,
                            self.audio_frames(enc))

    def peaks_of(self, enc: EncodedAudio, prompt: list[int], history: list[int], tokens: list[int]) -> list[int]:
        """Per token of ``tokens`` (a decode after ``prompt``, whose last ``history`` tokens are committed
        text), its attention peak as :meth:`greedy` computes it, from one decoder call over the whole
        sequence (for a beam search's winner that lost a loop from its middle, whose tracked rows no
        longer fit). Empty for an export without the alignment output."""
        if not tokens:
            return []
        self_k, self_v = self.empty_cache()
        step = self.step(np.array([prompt + tokens]), 0, self_k, self_v, enc)
        if step.alignment is None:
            return []
        base = history_rows(step.alignment[0], prompt, history)
        rows = base + list(step.alignment[0, len(prompt) - 1: len(prompt) - 1 + len(tokens)])
        return attention_peaks(np.array(rows))[len(base):]

    def _token_limit(self, enc: EncodedAudio, prompt: list[int], max_new_tokens: int | None) -> int:
        """New tokens a decode may emit: the text context left, and a rate bound against loops."""
        limit = min(self.n_text_ctx - len(prompt), TOKEN_ALLOWANCE + int(MAX_TOKENS_PER_S * enc.duration_s))
        return min(max_new_tokens or limit, limit)

    def audio_frames(self, enc: EncodedAudio) -> int:
        """Encoder frames that hold audio rather than padding."""
        return min(int(enc.duration_s * FRAMES_PER_S), enc.cross_k.shape[3])

    def detect_language(self, enc: EncodedAudio) -> tuple[str, float]:
        """Most likely spoken language from the first decoder step (multilingual only)."""
        if not self.multilingual:
            return "en", 1.0
        self_k, self_v = self.empty_cache()
        logits, _, _ = self.decode_step(np.array([[self.sot]]), 0, self_k, self_v, enc)
        codes = list(self.lang_ids)
        ids = np.array([self.lang_ids[c] for c in codes])
        scores = logits[0][ids].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        return codes[best], float(probs[best])

    def transcribe(self, audio: np.ndarray, task: str = "transcribe", language: str | None = None,
                   pad_to_s: float | None = 30.0, beam_size: int = 1, guards: bool = True) -> DecodeResult:
        """Offline recognition/translation of up to 30 s of audio (greedy, or a beam search of ``beam_size``;
        ``guards``: see :meth:`beam_search`)."""
        enc = self.encode(audio, pad_to_s)
        if language is None and self.multilingual:
            language, _ = self.detect_language(enc)
        return self.beam_search(enc, self.prompt(task, language), beam_size, guards=guards)  # beam 1: greedy


@dataclass
class _Beam:
    """One beam of :meth:`WhisperModel.beam_search`: its new tokens, their summed log-probability and,
    for AlignAtt, the alignment row of each token."""

    tokens: list[int]
    total: float
    rows: list[np.ndarray]
    ended: bool = False  # finished at end-of-text


class _GreedyRow:
    """One greedy decode's state, advanced one decoder output at a time (alone or in a batch)."""

    def __init__(self, model: WhisperModel, request: GreedyRequest):
        self.model, self.request = model, request
        self.enc = request.enc
        self.frames = request.enc.cross_k.shape[3]
        self.max_new = model._token_limit(request.enc, request.prompt, request.max_new_tokens)
        self.forced = list(request.forced or [])
        self.history = request.history or []
        self.out: list[int] = []
        self.tokens: list[int] = []  # every token fed so far
        self.logprobs: list[float] = []
        self.rows: list[np.ndarray] = []  # alignment rows: the committed tokens', then one per new token
        self.committed_rows = 0
        self.ended = False
        self.border_at: int | None = None
        self.position = 0  # positions in the row's cache (= the next fed token's position)
        self.self_k = self.self_v = None  # the prompt's cache (greedy_batch carries it on)

    def start(self) -> bool:
        """Run the prompt (on its own: prompts differ in length); False if the decode is already over."""
        model, prompt = self.model, self.request.prompt
        self_k, self_v = model.empty_cache()
        step = model.step(np.array([prompt]), 0, self_k, self_v, self.enc)
        if step.alignment is not None:
            self.rows = history_rows(step.alignment[0], prompt, self.history)
        self.committed_rows = len(self.rows)
        self.tokens = list(prompt)
        self.self_k, self.self_v = step.self_k, step.self_v
        return self.advance(step.logits[0], None if step.alignment is None else step.alignment[0, -1])

    def advance(self, logits: np.ndarray, alignment: np.ndarray | None) -> bool:
        """Choose the next token from the decoder's output for this row's last token (``alignment``: that
        query's row of the alignment heads' attention); False once the decode is over, else the token
        is to be fed next, at ``position`` (the row's cache holds that many positions)."""
        model, out = self.model, self.out
        if len(out) >= self.max_new:
            return False
        scores = logits.astype(np.float64)
        scores[model.suppress] = -np.inf
        if not out and self.request.at_start:
            scores[model.suppress_begin] = -np.inf
        token = self.forced[len(out)] if len(out) < len(self.forced) else int(np.argmax(scores))
        m = scores.max()
        self.logprobs.append(float(scores[token] - m - np.log(np.exp(scores - m).sum())))
        if token == model.eot:
            self.ended = True
            return False
        out.append(token)
        if alignment is not None:
            self.rows.append(alignment)
            if self._past_border():
                return False
        if self.request.stop_on_repeat and len(out) > len(self.forced) and \
                (cut := loop_cut(self.history, out, floor=len(self.forced))) is not None:
            log.debug("repetition loop cut (%d tokens)", len(out) - cut)
            del out[cut:]
            self.logprobs = self.logprobs[: len(out)]
            return False
        self.tokens.append(token)
        self.position = len(self.tokens) - 1
        return True

    def _past_border(self) -> bool:
        """AlignAtt's stop: STOP_LOOKAHEAD tokens after the first whose peak reaches ``stop_frame``."""
        stop_frame, out = self.request.stop_frame, self.out
        if stop_frame is None or len(out) <= len(self.forced) or len(self.rows) < MIN_ALIGNMENT_ROWS:
            return False
        if self.border_at is None and last_peak(np.array(self.rows)) >= stop_frame:
            self.border_at = len(out)
        return self.border_at is not None and len(out) >= self.border_at + STOP_LOOKAHEAD

    def result(self) -> DecodeResult:
        model, out = self.model, self.out
        if self.request.stop_on_repeat and (cut := restart_at(model.tokenizer, self.history, out)) is not None:
            log.debug("restart of the utterance cut (%d tokens)", len(out) - cut)
            del out[cut:]  # as a repetition loop's cut: the decode did not end at end-of-text there
            self.ended = False
        logprobs = self.logprobs[: len(out) + int(self.ended)]
        avg = float(np.mean(logprobs)) if logprobs else 0.0
        rows = self.rows
        peaks = attention_peaks(np.array(rows[: self.committed_rows + len(out)]))[self.committed_rows:] if rows else []
        return DecodeResult(out, model.tokenizer.decode(out).strip(), self.ended, avg, logprobs, peaks,
                            model.audio_frames(self.enc))
