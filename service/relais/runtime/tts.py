"""Text to speech with a Piper (VITS) voice on our own ONNX Runtime session.

Text -> phonemes uses the espeak-ng bridge bundled with ``piper-tts`` (only its
phonemiser; inference is ours, over ``relais.runtime.ort.create_session``). Phonemes
-> ids follows Piper's rule: BOS, PAD, then every phoneme's ids each followed by PAD,
then EOS. One model call per sentence; ``split_sentences`` lets the pipeline speak a
committed phrase as soon as it is complete. ``synthesize`` takes a per-call speaking
rate; ``trim_silence`` cuts the silence the voice pads each call with.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais.models.metadata import session_metadata
from relais.runtime.ort import RuntimeConfig, create_session

log = logging.getLogger(__name__)

MODEL_TYPE = "piper_vits"  # relais.model_type of a prepared voice (relais_export.piper)
# Piper's special symbols: padding between phonemes, beginning and end of sentence.
PAD, BOS, EOS = "_", "^", "$"
PHONEME_TYPES = ("espeak", "text")  # the phonemisers implemented here (the exporter refuses others)

# A phrase the pipeline speaks may stop mid-sentence, right after the article "a" ("passed by a",
# then "timebreak" in the next phrase). espeak-ng reads a clause-final "a" as the letter's name
# (stressed "ay"), and listeners (and ASR) then hear a letter and a sentence break. A lowercase
# final "a" is the article: it is read as it is within a sentence (weak "uh").
_FINAL_ARTICLE = re.compile(r"(?:^|\s)a$")
_WEAK_ARTICLE = "ɐ"
# espeak-ng reads a hyphen between two numbers as "dash": "a score of 6-6" became "six dash six",
# "3-2" "three dash two". People say "to" for scores and ranges alike ("1990 to 2000"). A chain
# of them (a date, "2020-11-29") is left as it is.
_NUMBER_SPAN = re.compile(r"(?<![\d\-–])(\d+(?:[.,]\d+)?)[-–](\d+(?:[.,]\d+)?)(?![\d\-–])")

# espeak-ng is a C library with one global voice: serialise its use across threads.
_ESPEAK_LOCK = threading.Lock()
_espeak = None


def _espeak_bridge():
    global _espeak
    if _espeak is None:
        try:
            from piper import espeakbridge
            from piper.phonemize_espeak import ESPEAK_DATA_DIR
        except ImportError as exc:
            raise RuntimeError("Piper voices need the espeak-ng phonemiser from piper-tts; "
                               "install it with: pip install piper-tts") from exc
        espeakbridge.initialize(str(ESPEAK_DATA_DIR))
        _espeak = espeakbridge
    return _espeak


@dataclass(frozen=True)
class TtsConfig:
    speaker_id: int | None = None  # multi-speaker voices; None: the voice's default
    length_scale: float | None = None  # > 1 speaks slower; None: the voice's default
    noise_scale: float | None = None
    noise_w_scale: float | None = None
    sentence_silence_ms: int = 0  # pause inserted between sentences by synthesize()
    volume: float = 1.0  # gain; output is clipped to [-1, 1]

    def __post_init__(self):
        for name in ("length_scale", "noise_scale", "noise_w_scale"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"tts.{name} must be > 0, got {value}")
        if self.sentence_silence_ms < 0:
            raise ValueError(f"tts.sentence_silence_ms must be >= 0, got {self.sentence_silence_ms}")
        if self.volume <= 0:
            raise ValueError(f"tts.volume must be > 0, got {self.volume}")
        if self.speaker_id is not None and self.speaker_id < 0:
            raise ValueError(f"tts.speaker_id must be >= 0, got {self.speaker_id}")


@dataclass(frozen=True)
class SpeechChunk:
    text: str
    audio: np.ndarray  # float32 mono at sample_rate_hz
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate_hz


# Punctuation that ends a sentence, a phrase (also ; and :) or a clause (also ,), and
# the closing quotes/brackets that may follow it. The one definition: the speech stage
# cuts phrases with PHRASE_END / CLAUSE_END and knows a sentence's end by SENTENCE_END;
# split_sentences splits on _SENTENCE_SPLIT.
SENTENCE_TERMINATORS = ".!?…"
CLOSERS = "\"'”’)\\]"
SENTENCE_END = re.compile(f"[{SENTENCE_TERMINATORS}][{CLOSERS}]*\\s*$")  # a word that ends a sentence
PHRASE_END = re.compile(f"[{SENTENCE_TERMINATORS};:][{CLOSERS}]*\\s*$")  # a word that ends a phrase
CLAUSE_END = re.compile(f"[,{SENTENCE_TERMINATORS};:][{CLOSERS}]*\\s*$")  # ... or a clause
# Sentence ends: terminal punctuation (optionally closing quotes/brackets) + space, or
# CJK terminators. Abbreviations and initials are re-joined below.
_SENTENCE_SPLIT = re.compile(f"(?<=[{SENTENCE_TERMINATORS}])[{CLOSERS}]*\\s+|(?<=[。！？])")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "fig", "approx"}


def split_sentences(text: str) -> list[str]:
    """Split text into sentences that can be synthesised one at a time."""
    pieces = [p.strip() for p in _SENTENCE_SPLIT.split(text.strip()) if p and p.strip()]
    out: list[str] = []
    for piece in pieces:
        if out:
            last_word = out[-1].rsplit(None, 1)[-1].rstrip(".").lower()
            # "Dr. Smith", "J. Smith": the full stop did not end the sentence.
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                out[-1] = f"{out[-1]} {piece}"
                continue
        out.append(piece)
    return out


class PiperTts:
    """A Piper voice: shared and immutable, safe to call from several threads."""

    def __init__(self, voice: str | Path, config: TtsConfig | None = None, runtime: RuntimeConfig | None = None):
        onnx_path = _voice_file(Path(voice))
        json_path = onnx_path.with_name(onnx_path.name + ".json")
        if not json_path.is_file():
            raise ValueError(f"Piper voice config {json_path} not found (it belongs next to the .onnx file)")
        voice_cfg = json.loads(json_path.read_text(encoding="utf-8"))
        self.loaded = create_session(onnx_path, runtime)
        self.facts = session_metadata(self.loaded.session, self.loaded.path)
        model_type = self.facts.get("model_type")
        if model_type not in (None, MODEL_TYPE):
            raise ValueError(f"{onnx_path} is a {model_type!r} model, not a Piper voice")
        if model_type is None:
            log.warning("%s has no relais metadata; prepare it with `relais export piper`", onnx_path.name)
        self.config = config or TtsConfig()
        self.sample_rate_hz = int(voice_cfg["audio"]["sample_rate"])
        self.espeak_voice = str(voice_cfg.get("espeak", {}).get("voice", ""))
        self.phoneme_type = voice_cfg.get("phoneme_type", "espeak")
        if self.phoneme_type not in PHONEME_TYPES:
            raise ValueError(f"{json_path}: phoneme_type {self.phoneme_type!r} is not supported")
        self.id_map: dict[str, list[int]] = voice_cfg["phoneme_id_map"]
        self.vowel_clusters = sorted((tuple(c) for c in voice_cfg.get("vowel_clusters") or []), key=len, reverse=True)
        inference = voice_cfg.get("inference", {})
        self.num_speakers = int(voice_cfg.get("num_speakers", 1))
        self.default_speaker_id = int(voice_cfg.get("default_speaker_id", 0))
        cfg = self.config
        self.scales = np.array([
            cfg.noise_scale or inference.get("noise_scale", 0.667),
            cfg.length_scale or inference.get("length_scale", 1.0),
            cfg.noise_w_scale or inference.get("noise_w", 0.8),
        ], dtype=np.float32)
        if cfg.speaker_id is not None and cfg.speaker_id >= self.num_speakers:
            raise ValueError(f"tts.speaker_id {cfg.speaker_id} out of range: the voice has {self.num_speakers}")
        self.name = onnx_path.name[: -len(".onnx")]

    # -- text -> ids --------------------------------------------------------------
    def phonemize(self, text: str) -> list[list[str]]:
        """Phonemes of each sentence (espeak-ng's own sentence split)."""
        if self.phoneme_type == "text":
            return [list(unicodedata.normalize("NFD", s)) for s in split_sentences(text)]
        text = text.strip()
        english = self.espeak_voice.startswith("en")
        if english:
            text = _NUMBER_SPAN.sub(r"\1 to \2", text)
        if english and _FINAL_ARTICLE.search(text):
            head = self.phonemize(text[:-1])
            if not head:
                return [[_WEAK_ARTICLE]]
            head[-1] += [" ", _WEAK_ARTICLE] if head[-1][-1] != " " else [_WEAK_ARTICLE]
            return head
        with _ESPEAK_LOCK:
            espeak = _espeak_bridge()
            espeak.set_voice(self.espeak_voice)
            clauses = espeak.get_phonemes(text)
        sentences: list[list[str]] = []
        current: list[str] = []
        for phonemes, terminator, end_of_sentence in clauses:
            phonemes = re.sub(r"\([^)]+\)", "", phonemes)  # drop (lang) switch flags
            phonemes += terminator
            if terminator in (",", ":", ";"):
                phonemes += " "  # a clause pause, not a sentence end
            # NFD splits accented symbols into base + combining mark, as the id map expects
            current.extend(unicodedata.normalize("NFD", phonemes))
            if end_of_sentence:
                sentences.append(self._merge_clusters(current))
                current = []
        if current:
            sentences.append(self._merge_clusters(current))
        return [s for s in sentences if s]

    def _merge_clusters(self, phonemes: list[str]) -> list[str]:
        if not self.vowel_clusters:
            return phonemes
        out, i = [], 0
        while i < len(phonemes):
            for cluster in self.vowel_clusters:
                if tuple(phonemes[i:i + len(cluster)]) == cluster:
                    out.append("".join(cluster))
                    i += len(cluster)
                    break
            else:
                out.append(phonemes[i])
                i += 1
        return out

    def phoneme_ids(self, phonemes: list[str]) -> list[int]:
        pad = self.id_map[PAD]
        ids = [*self.id_map[BOS], *pad]
        missing = set()
        for p in phonemes:
            if p not in self.id_map:
                missing.add(p)
                continue
            ids += self.id_map[p]
            ids += pad
        ids += self.id_map[EOS]
        if missing:
            log.warning("voice %s has no id for phoneme(s) %s; skipped", self.name, sorted(missing))
        return ids

    # -- synthesis --------------------------------------------------------------
    @property
    def length_scale(self) -> float:
        """The voice's speaking rate (its config, else the voice file's inference default)."""
        return float(self.scales[1])

    def synthesize_ids(self, ids: list[int], length_scale: float | None = None) -> np.ndarray:
        scales = self.scales
        if length_scale is not None:
            if length_scale <= 0:
                raise ValueError(f"length_scale must be > 0, got {length_scale}")
            scales = scales.copy()
            scales[1] = length_scale
        feed = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        if "sid" in self.loaded.input_names:
            sid = self.config.speaker_id if self.config.speaker_id is not None else self.default_speaker_id
            feed["sid"] = np.array([sid], dtype=np.int64)
        audio = self.loaded.run(None, feed)[0].reshape(-1)
        if self.config.volume != 1.0:
            audio = audio * self.config.volume
        # No per-sentence peak normalisation (Piper's CLI does it): phrases synthesised
        # one at a time must keep a consistent loudness.
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def synthesize(self, text: str, length_scale: float | None = None, continues: bool = False,
                   resumes: bool = False) -> np.ndarray:
        """Float32 mono audio at ``sample_rate_hz`` for ``text`` (empty for no speech).
        ``length_scale`` overrides the voice's rate for this call (< 1 speaks faster).
        ``continues``: ``text`` is a phrase its sentence goes on after (the pipeline speaks
        sentences in pieces). Its phonemes then end with a word boundary, as they would
        within the sentence, instead of ending the utterance: a lone first word ("The",
        "I") spoken as a whole sentence was heard as another word ("that", "we'll").
        ``resumes``: ``text`` goes on with a sentence an earlier phrase began. Its phonemes
        then begin with a word boundary, so it does not open like a sentence ("heated with"
        after "The building is" was heard as "he did with")."""
        gap = np.zeros(self.config.sentence_silence_ms * self.sample_rate_hz // 1000, np.float32)
        parts: list[np.ndarray] = []
        sentences = self.phonemize(text)
        if continues and sentences and sentences[-1][-1] != " " and not PHRASE_END.search(text):
            sentences[-1] = [*sentences[-1], " "]
        if resumes and sentences and sentences[0][0] != " ":
            sentences[0] = [" ", *sentences[0]]
        for phonemes in sentences:
            if parts and len(gap):
                parts.append(gap)
            parts.append(self.synthesize_ids(self.phoneme_ids(phonemes), length_scale))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def synthesize_sentences(self, text: str) -> list[SpeechChunk]:
        """One chunk per sentence of ``text``, each synthesised on its own."""
        return [SpeechChunk(s, self.synthesize(s), self.sample_rate_hz) for s in split_sentences(text)]


def speech_bounds(audio: np.ndarray, sample_rate_hz: int, *, threshold_db: float = -40.0, frame_s: float = 0.01,
                  margin_s: float = 0.03, end_margin_s: float | None = None) -> tuple[int, int]:
    """Sample range [start, end) of ``audio`` from ``margin_s`` before its first frame to ``margin_s``
    (``end_margin_s`` where given) after its last frame whose RMS is within ``threshold_db`` of the
    loudest frame's. The whole range when nothing is louder than silence."""
    frame = max(1, round(frame_s * sample_rate_hz))
    n = len(audio) // frame
    if n == 0:
        return 0, len(audio)
    frames = audio[: n * frame].astype(np.float64).reshape(n, frame)
    if len(audio) > n * frame:  # the short last frame counts too
        tail = audio[n * frame:].astype(np.float64)
        rms = np.append(np.sqrt((frames ** 2).mean(axis=1)), np.sqrt((tail ** 2).mean()))
    else:
        rms = np.sqrt((frames ** 2).mean(axis=1))
    peak = rms.max()
    if peak <= 0:
        return 0, len(audio)
    loud = np.nonzero(rms >= peak * 10 ** (threshold_db / 20))[0]
    margin = round(margin_s * sample_rate_hz)
    end_margin = margin if end_margin_s is None else round(end_margin_s * sample_rate_hz)
    return max(0, int(loud[0]) * frame - margin), min(len(audio), (int(loud[-1]) + 1) * frame + end_margin)


def trim_silence(audio: np.ndarray, sample_rate_hz: int, **bounds) -> np.ndarray:
    """``audio`` without its leading and trailing silence (Piper pads every call), keeping a
    margin so soft consonants survive (``speech_bounds``); never empty unless ``audio`` is."""
    start, end = speech_bounds(audio, sample_rate_hz, **bounds)
    return audio[start:end]


def _voice_file(path: Path) -> Path:
    if path.is_dir():
        candidates = sorted(path.glob("*.onnx"))
        if len(candidates) != 1:
            raise ValueError(f"{path} should hold exactly one Piper voice .onnx file, found {len(candidates)}")
        return candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"Piper voice {path} not found")
    return path
