"""ASR of the produced speech (for ASR-BLEU) and the offline full-utterance baseline.

ASR-BLEU: the translated speech is resampled to 16 kHz, cut into windows of at most
28 s (at the quietest 100 ms near each cut), transcribed in English with a Whisper
model (by default the model set's own ``whisper-base`` at fp32; any exported Whisper
directory can be given instead, e.g. a larger one) and scored like the text.

Offline baseline: the same engine's Whisper translates the whole utterance at once
(one greedy pass over <= 28 s windows, no policy, no latency), and its voice speaks
the result; the same ASR scores that speech.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais.audio import PIPELINE_RATE_HZ
from relais.audio.pcm import resample

log = logging.getLogger(__name__)

WINDOW_S = 28.0


@dataclass(frozen=True)
class AsrModelInfo:
    path: str
    precision: str


def split_windows(audio: np.ndarray, rate_hz: int, max_s: float = WINDOW_S) -> list[np.ndarray]:
    """Pieces of at most ``max_s``, each cut at the quietest 100 ms frame in its last 5 s."""
    size, frame = int(max_s * rate_hz), max(1, rate_hz // 10)
    out, start = [], 0
    while len(audio) - start > size:
        search_from = start + size - 5 * rate_hz
        region = audio[search_from:start + size]
        n = len(region) // frame
        energy = (region[:n * frame].reshape(n, frame) ** 2).mean(axis=1)
        cut = search_from + int(np.argmin(energy)) * frame + frame // 2
        out.append(audio[start:cut])
        start = cut
    out.append(audio[start:])
    return [p for p in out if len(p)]


class SpeechRecogniser:
    """English transcription of output speech with an exported Whisper model directory."""

    def __init__(self, model_dir: str | Path, precision: str | None = None, runtime=None):
        from relais.runtime.whisper import WhisperModel

        model_dir = Path(model_dir)
        if precision is None:
            precision = next((p for p in ("fp32", "int8", "fp16") if (model_dir / f"encoder.{p}.onnx").is_file()), None)
            if precision is None:
                raise ValueError(f"{model_dir} holds no exported Whisper encoder (encoder.<precision>.onnx)")
        self.model = WhisperModel(model_dir, precision, runtime)
        self.info = AsrModelInfo(str(model_dir), precision)
        log.info("ASR for ASR-BLEU: %s (%s)", model_dir, precision)

    def transcribe(self, audio: np.ndarray, rate_hz: int) -> str:
        if audio is None or len(audio) == 0:
            return ""
        language = "en" if self.model.multilingual else None
        pieces = split_windows(resample(audio, rate_hz, PIPELINE_RATE_HZ), PIPELINE_RATE_HZ)
        return " ".join(self.model.transcribe(p, "transcribe", language).text.strip() for p in pieces).strip()


def default_asr_dir(models_dir: str | Path | None) -> Path:
    from relais.models.manifest import load_model_set

    model_set = load_model_set(models_dir)
    return model_set.path(model_set.get("whisper-base").name)


@dataclass(frozen=True)
class OfflineOutput:
    id: str
    translation: str
    audio: np.ndarray
    sample_rate_hz: int


def offline_translate(engine, audio_16k: np.ndarray, utt_id: str, source_language: str | None,
                      voice: str | None = None) -> OfflineOutput:
    """Whole-utterance translation to English with the engine's Whisper, spoken by its voice."""
    text = " ".join(engine.whisper.transcribe(p, "translate", source_language).text.strip()
                    for p in split_windows(audio_16k, 16000)).strip()
    name = voice or engine.session_config(source_language=source_language or "", target_language="en").voice
    tts = engine.voices[name]
    speech = tts.synthesize(text) if text else np.zeros(0, np.float32)
    return OfflineOutput(utt_id, text, speech, tts.sample_rate_hz)
