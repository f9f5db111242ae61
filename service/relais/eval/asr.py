"""ASR of the produced speech (for ASR-BLEU) and the offline full-utterance baseline.

ASR-BLEU: the translated speech is resampled to 16 kHz, cut into windows of at most
28 s (at the quietest 100 ms near each cut), transcribed in English with a Whisper
model (by default the model set's own ``whisper-base`` at fp32; any exported Whisper
directory can be given instead, e.g. a larger one) with a beam search of 5, as Whisper's own
transcription decodes, verbatim (without the decoder's guards against Whisper's loops, which
would edit a loop the voice really spoke), and scored like the text.

Offline baseline: the same engine's Whisper translates the whole utterance at once
(one greedy pass over <= 28 s windows, no policy, no latency), and its voice speaks
the result; the same ASR scores that speech.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from relais.audio import PIPELINE_RATE_HZ
from relais.audio.files import load_audio_16k
from relais.audio.pcm import resample
from relais.eval.data import Utterance
from relais.eval.measure import UtteranceFigures
from relais.eval.results import OfflineResults, OfflineRow, OfflineSummary, quality
from relais.eval.runner import BatchRun, Progress

if TYPE_CHECKING:
    from relais.pipeline.engine import TranslationEngine
    from relais.runtime.ort import RuntimeConfig

log = logging.getLogger(__name__)

WINDOW_S = 28.0
# The listener's beam: Whisper's own transcription default. On en_asr's real English speech the
# model set's Whisper base hears WER 0.076 with it and 0.116 greedy (docs/benchmarks.md, "The
# listener"), so a greedy listener charges the voice with its own mishearings.
LISTENER_BEAM = 5


@dataclass(frozen=True)
class AsrModelInfo:
    path: str
    precision: str
    beam_size: int = LISTENER_BEAM

    @property
    def label(self) -> str:
        decoding = "greedy" if self.beam_size == 1 else f"beam search of {self.beam_size}"
        return f"{self.path} ({self.precision}, {decoding})"


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

    def __init__(self, model_dir: str | Path, precision: str | None = None, runtime: RuntimeConfig | None = None,
                 beam_size: int = LISTENER_BEAM):
        from relais.runtime.whisper import WhisperModel

        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or not 1 <= beam_size <= 16:
            raise ValueError(f"the ASR's beam size must be within 1..16 (1 = greedy), got {beam_size!r}")
        model_dir = Path(model_dir)
        if precision is None:
            precision = next((p for p in ("fp32", "int8", "fp16") if (model_dir / f"encoder.{p}.onnx").is_file()), None)
            if precision is None:
                raise ValueError(f"{model_dir} holds no exported Whisper encoder (encoder.<precision>.onnx)")
        self.model = WhisperModel(model_dir, precision, runtime)
        self.info = AsrModelInfo(str(model_dir), precision, beam_size)
        log.info("ASR for ASR-BLEU: %s", self.info.label)

    def transcribe(self, audio: np.ndarray, rate_hz: int) -> str:
        if len(audio) == 0:
            return ""
        language = "en" if self.model.multilingual else None
        pieces = split_windows(resample(audio, rate_hz, PIPELINE_RATE_HZ), PIPELINE_RATE_HZ)
        # Verbatim: the listener hears a loop the voice speaks, so the decoding guards against
        # Whisper's own loops must not edit it out of the reference (they did: "a wall, a wall,
        # a wall, a 17 person" was heard as "a wall, a"). The encoder sees a padded 30 s window,
        # where Whisper does not loop on clean speech; the token limit still bounds a runaway.
        return " ".join(self.model.transcribe(p, "transcribe", language, beam_size=self.info.beam_size,
                                              guards=False).text.strip()
                        for p in pieces).strip()


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


def write_speech(directory: Path, name: str, audio: np.ndarray, rate_hz: int) -> Path:
    """``audio`` as ``directory/name`` (16-bit WAV at the voice's rate), the directory made if needed."""
    import soundfile

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    soundfile.write(path, np.asarray(audio, np.float32), rate_hz, subtype="PCM_16")
    return path


def save_outputs(batch: BatchRun, directory: Path) -> int:
    """Every stream's output speech, as the client received it, as ``<id>.wav``; returns how many."""
    saved = 0
    for run in batch.runs:
        if run.result is not None and len(run.result.audio):
            write_speech(directory, f"{run.utterance.id}.wav", run.result.audio, run.result.output_sample_rate_hz)
            saved += 1
    return saved


def transcribe_outputs(recogniser: SpeechRecogniser, batch: BatchRun, figs: list[UtteranceFigures]) -> None:
    """Fill ``asr_text`` of every utterance with a reference from its streamed output speech."""
    by_id = {r.utterance.id: r.result for r in batch.runs if r.result is not None}
    todo = [f for f in figs if f.reference and len(by_id[f.id].audio)]
    with Progress(len(todo), "ASR of output speech") as bar:
        for f in todo:
            result = by_id[f.id]
            f.asr_text = recogniser.transcribe(result.audio, result.output_sample_rate_hz)
            bar.update()


def offline_translate(engine: TranslationEngine, audio_16k: np.ndarray, utt_id: str, source_language: str | None,
                      voice: str | None = None, beam_size: int = 1) -> OfflineOutput:
    """Whole-utterance translation to English with the engine's Whisper (greedy, or a beam search of
    ``beam_size``), spoken by its voice."""
    text = " ".join(engine.whisper.transcribe(p, "translate", source_language, beam_size=beam_size).text.strip()
                    for p in split_windows(audio_16k, PIPELINE_RATE_HZ)).strip()
    name = voice or engine.session_config(source_language=source_language or "", target_language="en").voice
    tts = engine.voices[name]
    speech = tts.synthesize(text) if text else np.zeros(0, np.float32)
    return OfflineOutput(utt_id, text, speech, tts.sample_rate_hz)


def offline_baseline(engine: TranslationEngine, utts: list[Utterance], recogniser: SpeechRecogniser | None,
                     source_language: str | None, target_language: str, beam_size: int = 1,
                     audio_dir: Path | None = None) -> OfflineResults:
    """Every utterance with a reference translated whole (:func:`offline_translate`), scored like the stream;
    with ``audio_dir``, its speech is kept there as ``<id>.offline.wav``."""
    rows, compute_s, source_s = [], 0.0, 0.0
    todo = [u for u in utts if u.reference]
    with Progress(len(todo), "offline baseline") as bar:
        for u in todo:
            audio = load_audio_16k(u.path)
            started = time.monotonic()
            out = offline_translate(engine, audio, u.id, source_language, beam_size=beam_size)
            compute_s += time.monotonic() - started
            source_s += len(audio) / PIPELINE_RATE_HZ
            if audio_dir is not None and len(out.audio):
                write_speech(audio_dir, f"{u.id}.offline.wav", out.audio, out.sample_rate_hz)
            asr_text = recogniser.transcribe(out.audio, out.sample_rate_hz) if recogniser is not None else ""
            rows.append(OfflineRow(u.id, out.translation, asr_text, u.reference, len(out.audio) / out.sample_rate_hz))
            bar.update()
    figs = [UtteranceFigures(id=r.id, duration_s=0.0, mode="offline", translation=r.translation,
                             reference=r.reference, asr_text=r.asr_text, audio_out_s=r.audio_out_s) for r in rows]
    scores = quality(figs, target_language)
    summary = OfflineSummary(len(rows), compute_s / source_s if source_s else None,
                             scores if recogniser is not None else scores.without_asr())
    return OfflineResults(summary, rows, f"whole utterance at once: Whisper {engine.whisper.precision_label} translate "
                                         f"({'greedy' if beam_size == 1 else f'beam search of {beam_size}'}, <= 28 s "
                                         f"windows), the same voice speaks it; no policy, no latency", beam_size)
