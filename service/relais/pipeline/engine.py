"""The translation engine: the shared, immutable models every stream uses.

One instance per server. It loads the model set once (Whisper, Silero VAD, Piper
voices), validates stream settings into a ``SessionConfig`` and builds each stream's
``StreamingSession`` from its stages, handing them the server's ``ModelScheduler``
(which times every model call for the metrics). The engine itself runs no stream.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relais.errors import InvalidRequest
from relais.models.manifest import ModelEntry, load_model_set
from relais.pipeline.policy import AlignAttPolicy, LocalAgreementPolicy, SimultaneousPolicy
from relais.pipeline.recognizer import LoadShedding, Recognizer, RecognizerSettings
from relais.pipeline.scheduler import ModelScheduler, StageObserver, StreamCalls
from relais.pipeline.session import StreamingSession
from relais.pipeline.speaker import Speaker, SpeechSettings
from relais.runtime.ort import RuntimeConfig, check_precision
from relais.runtime.tts import PiperTts
from relais.runtime.vad import SileroVad, VadConfig
from relais.runtime.whisper import WhisperModel

log = logging.getLogger(__name__)


POLICIES = ("local_agreement", "alignatt")


@dataclass(frozen=True)
class LatencyProfile:
    """The latency/quality knob: which policy decides, how often, and how long phrases get."""

    name: str
    step_s: float  # decode a new hypothesis every step_s of source audio
    agreement: int  # LocalAgreement-n (with AlignAtt: also agree over n hypotheses; 1: pure AlignAtt)
    phrase_max_words: int  # speak once this many committed words wait (0: sentence ends only)
    policy: str = "local_agreement"  # or "alignatt" (needs an export with the alignment output)
    first_step_s: float = 0.0  # step until an utterance's first commit (0: step_s)
    frame_threshold: int = 10  # AlignAtt: encoder frames (20 ms) before the audio end a token may attend to
    first_frame_threshold: int = 0  # AlignAtt: frame_threshold until an utterance's first commit (0: the same)
    first_commit_words: int = 0  # AlignAtt: at most this many words in an utterance's first commit (0: no cap)
    max_hold_s: float = 0.0  # LocalAgreement: force a commit after this long without one (0: never)
    beam_size: int = 1  # beam search for each utterance's final decode (1: greedy)
    step_beam_size: int = 1  # beam search for each hypothesis the policy commits from (1: greedy, batched across streams)
    idle_backlog_s: float = 0.25  # speech: speak waiting words at once when less than this is left to play
    min_length_factor: float = 0.8  # speech: fastest speaking rate under backlog (x the voice's length scale)
    speedup_from_s: float = 1.5  # speech: the backlog from which it speaks faster than the voice's rate
    speedup_full_s: float = 3.0  # speech: the backlog at which min_length_factor is reached
    resume_phrases: int = 1  # speech: 1 voices a phrase that goes on with an open sentence as resuming it

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0.1 <= self.step_s <= 10.0:
            raise ValueError(f"step_s must be within 0.1..10 s, got {self.step_s}")
        if self.first_step_s and not 0.1 <= self.first_step_s <= self.step_s:
            raise ValueError(f"first_step_s must be 0 (off) or within 0.1 s..step_s, got {self.first_step_s}")
        self.speech_settings()  # validates
        for key in ("beam_size", "step_beam_size"):
            if not 1 <= getattr(self, key) <= 16:
                raise ValueError(f"{key} must be within 1..16, got {getattr(self, key)}")
        if self.agreement < 1 or min(self.phrase_max_words, self.frame_threshold, self.first_frame_threshold,
                                     self.first_commit_words, self.max_hold_s) < 0:
            raise ValueError("agreement must be >= 1; phrase_max_words, frame_threshold, first_frame_threshold, "
                             "first_commit_words and max_hold_s >= 0")

    def speech_settings(self) -> SpeechSettings:
        if self.resume_phrases not in (0, 1):
            raise ValueError(f"resume_phrases must be 0 or 1, got {self.resume_phrases}")
        return SpeechSettings(idle_backlog_s=self.idle_backlog_s, min_length_factor=self.min_length_factor,
                              speedup_from_s=self.speedup_from_s, speedup_full_s=self.speedup_full_s,
                              resume_phrases=bool(self.resume_phrases))

    def with_overrides(self, overrides: dict[str, object]) -> LatencyProfile:
        """A copy with some fields changed (values converted to the field's type); a clear error otherwise."""
        names = {f.name: f.type for f in dataclasses.fields(self) if f.name != "name"}
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown latency profile key(s) {unknown}; known: {sorted(names)}")
        converted = {}
        for key, value in overrides.items():
            kind = {"float": float, "int": int, "str": str}[str(names[key])]
            try:
                converted[key] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"latency profile key {key!r} needs a {names[key]}, got {value!r}") from None
        return dataclasses.replace(self, **converted)


# Points on the frontier measured on fr_en_dev (docs/benchmarks.md, "Quality-latency frontier" and
# "Beam search for the hypotheses AlignAtt commits from"): AlignAtt commits from one hypothesis,
# deciding every 0.5 s until an utterance's first commit, and beam-searches each final decode.
# balanced and quality also beam-search every hypothesis they commit from (+3.5 to +5 BLEU on
# fr_en_dev for a quarter more compute); balanced lets tokens attend up to 0.72 s from the audio's
# end, which keeps the last words' speech within 1.5 s of the speaker (0.8 s: 1.6 s). low decodes
# greedily (the cheapest and earliest) up to 0.68 s from the end (at 0.6 s two clips' first commits
# derailed their utterances: "The low mode, measured again"). LocalAgreement (policy=local_agreement,
# the quality mode before AlignAtt beam steps dominated it) stays a profile key away.
LATENCY_PROFILES = {
    "low": LatencyProfile("low", step_s=1.0, agreement=1, phrase_max_words=4, policy="alignatt",
                          frame_threshold=34, first_step_s=0.5, beam_size=3),
    "balanced": LatencyProfile("balanced", step_s=1.0, agreement=1, phrase_max_words=4, policy="alignatt",
                               frame_threshold=36, first_step_s=0.5, beam_size=3, step_beam_size=3),
    "quality": LatencyProfile("quality", step_s=1.0, agreement=1, phrase_max_words=0, policy="alignatt",
                              frame_threshold=40, first_step_s=0.5, beam_size=3, step_beam_size=3),
}


def split_pairs(text: str) -> dict[str, str]:
    """``"key=value, key=value"`` -> ``{key: value}`` (strings; empty items skipped)."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, value = (x.strip() for x in pair.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"takes key=value pairs separated by commas, got {pair!r}")
        out[key] = value
    return out


def parse_latency_overrides(text: str) -> dict[str, object]:
    """``"key=value,key=value"`` (LatencyProfile fields) -> typed values, checked against every mode
    (the server's ``latency.overrides``; ``relais eval --profile`` takes the same pairs)."""
    raw: dict[str, object] = dict(split_pairs(text))
    if not raw:
        return {}
    profile = LATENCY_PROFILES["balanced"].with_overrides(raw)  # converts; refuses unknown keys
    typed = {key: getattr(profile, key) for key in raw}
    for mode in LATENCY_PROFILES.values():  # valid on top of every mode (ranges, policy names)
        mode.with_overrides(typed)
    return typed


@dataclass(frozen=True)
class EngineConfig:
    models_dir: Path | None = None  # default: $RELAIS_MODELS_DIR or ~/.cache/relais/models
    precision: str = "auto"  # auto: fp16 on GPU if exported, int8 on CPU if exported, else fp32
    # The encoder's graph; auto: the decoder's (see _pick_encoder_precision).
    encoder_precision: str = "auto"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # The voice runs on these instead of runtime.providers (server config runtime.voice_providers):
    # the CPU by default, which was 5x faster than the CUDA provider on an H200 host.
    voice_providers: tuple[str, ...] = ("cpu",)
    asr_model: str = "whisper-base"
    # VAD for segmenting speech into utterances: a pause of min_silence_ms ends one.
    vad: VadConfig = field(default_factory=lambda: VadConfig(min_silence_ms=500, speech_pad_ms=200))
    max_utterance_s: float = 15.0  # a longer run of speech is cut (bounded cost per step)
    encoder_pad_s: float = 1.0  # silence appended to the audio the encoder sees
    context_tokens: int = 48  # committed tokens of earlier utterances used as prompt
    max_concurrent_calls: int = 1  # model calls run at once across all streams (see scheduler.py)
    call_timeout_s: float = 30.0  # a model call running longer is terminated, ending its stream (0: no bound)
    # Greedy decodes of different streams that queue at the same time share decoder calls, up to this
    # many (1: never); max_batch_wait_s > 0 holds a decode that long for others to join (only while
    # other streams decode: a lone stream never waits).
    max_batch: int = 4
    max_batch_wait_s: float = 0.05
    # Streams whose model calls queue decide less often (None: always on the profile's grid).
    load_shedding: LoadShedding | None = field(default_factory=LoadShedding)
    # Changes applied on top of every latency profile (benchmarks and experiments):
    # {"policy": "alignatt", "step_s": 0.5, ...}; keys are LatencyProfile fields.
    latency_overrides: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        check_precision(self.precision, key="models.precision")
        check_precision(self.encoder_precision, key="models.encoder_precision")
        for profile in LATENCY_PROFILES.values():
            profile.with_overrides(self.latency_overrides)  # fail at start, not per stream
        if not 2.0 <= self.max_utterance_s <= 28.0:
            raise ValueError(f"max_utterance_s must be within 2..28 s (Whisper sees 30 s), got {self.max_utterance_s}")


@dataclass(frozen=True)
class SessionConfig:
    source_language: str | None  # None: detect
    target_language: str
    task: str  # "translate" (to English) or "transcribe" (same language)
    voice: str  # "": a text-only session that asked for none
    voice_sample_rate_hz: int  # 0 without a voice
    return_text: bool
    return_audio: bool
    latency: LatencyProfile


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    language: str
    sample_rate_hz: int


@dataclass(frozen=True)
class EngineCapabilities:
    source_languages: list[str]
    target_languages: list[str]
    voices: list[VoiceInfo]
    models: list[ModelEntry]
    execution_provider: str


def _on_gpu(providers: tuple[str, ...]) -> bool:
    import onnxruntime as ort

    return any(p in ("cuda", "tensorrt") for p in providers) and "CUDAExecutionProvider" in ort.get_available_providers()


def scheduler_lanes(whisper_provider: str, stage_providers: dict[str, set[str]]) -> dict[str, str]:
    """The scheduler's lanes: a stage whose models all run on another device than Whisper (the
    VAD and the voice on the CPU beside Whisper on a GPU) gets that device's lane, so its calls
    do not queue behind Whisper's. On a CPU host every stage shares one lane ({})."""
    def device(provider: str) -> str:
        return "cpu" if provider == "cpu" else "gpu"

    lanes = {}
    for stage, providers in stage_providers.items():
        devices = {device(p) for p in providers}
        if len(devices) == 1 and devices != {device(whisper_provider)}:
            lanes[stage] = devices.pop()
    return lanes


def _check_exported(requested: str, available: list[str], key: str) -> str:
    if requested not in available:
        raise ValueError(f"{key} {requested!r} was not exported for this model; have {available} "
                         f"(re-run `relais models prepare --precision {requested}`)")
    return requested


def _pick_precision(requested: str, available: list[str], providers: tuple[str, ...]) -> str:
    if requested != "auto":
        return _check_exported(requested, available, "precision")
    for choice in (("fp16", "fp32") if _on_gpu(providers) else ("int8", "fp32")):
        if choice in available:
            return choice
    return available[0]


def _pick_encoder_precision(requested: str, decoder: str, available: list[str]) -> str:
    """The encoder's graph: the decoder's precision unless named. On CPUs without int8 dot-product
    instructions (VNNI) an fp32 encoder beside the int8 decoder runs the encoder 1.3x faster, but it
    translated fr_en_dev 0.8 BLEU worse when streamed (docs/benchmarks.md, "An fp32 encoder beside the
    int8 decoder"), so it is an option, not the default."""
    if requested == "auto":
        return decoder
    return _check_exported(requested, available, "encoder_precision")


def whisper_runtime(config: EngineConfig) -> RuntimeConfig:
    """The runtime settings for Whisper: its TensorRT engines take the most rows the engine puts in
    one call (the streams batched into a decode, the widest final beam search)."""
    profiles = [p.with_overrides(config.latency_overrides) for p in LATENCY_PROFILES.values()]
    widest = max([config.max_batch] + [max(p.beam_size, p.step_beam_size) for p in profiles])
    return dataclasses.replace(config.runtime, trt_max_batch=max(config.runtime.trt_max_batch, widest))


class TranslationEngine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        start = time.monotonic()
        self.model_set = load_model_set(self.config.models_dir)
        entry = self.model_set.get(self.config.asr_model)
        available = entry.facts.get("precisions", ["fp32"])
        precision = _pick_precision(self.config.precision, available, self.config.runtime.providers)
        encoder_precision = _pick_encoder_precision(self.config.encoder_precision, precision, available)
        self.whisper = WhisperModel(self.model_set.path(entry.name), precision, whisper_runtime(self.config),
                                    encoder_precision=encoder_precision)
        vad_entry = self.model_set.by_task("vad")[0]
        self.vad = SileroVad(self.model_set.path(vad_entry.name), self.config.vad)
        voice_runtime = dataclasses.replace(self.config.runtime, providers=tuple(self.config.voice_providers))
        self.voices: dict[str, PiperTts] = {}
        self.voice_info: dict[str, VoiceInfo] = {}
        for v in self.model_set.by_task("tts"):
            tts = PiperTts(self.model_set.path(v.name), runtime=voice_runtime)
            self.voices[tts.name] = tts
            self.voice_info[tts.name] = VoiceInfo(tts.name, (v.languages or ["?"])[0], tts.sample_rate_hz)
        self.load_s = time.monotonic() - start
        log.info("engine ready: %s (encoder %s, decoder %s) on %s, voices %s (%.1f s)", entry.name,
                 encoder_precision, precision, self.whisper.provider, sorted(self.voices), self.load_s)

    # -- facts ------------------------------------------------------------------
    @property
    def execution_provider(self) -> str:
        return self.whisper.provider

    def source_languages(self) -> list[str]:
        return sorted(self.whisper.lang_ids) if self.whisper.multilingual else ["en"]

    def target_languages(self) -> list[str]:
        spoken = {i.language for i in self.voice_info.values()}
        return sorted(spoken & ({"en"} | set(self.source_languages())))

    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(self.source_languages(), self.target_languages(),
                                  sorted(self.voice_info.values(), key=lambda v: v.name),
                                  list(self.model_set.models.values()), self.execution_provider)

    # -- sessions ---------------------------------------------------------------
    def session_config(self, *, source_language: str = "", target_language: str = "", voice: str = "",
                       latency_mode: str = "balanced", return_text: bool = True,
                       return_audio: bool = True) -> SessionConfig:
        source = (source_language or "").strip().lower() or None
        if source == "auto":
            source = None
        target = (target_language or "").strip().lower()
        if not target:
            raise InvalidRequest("target_language is required (e.g. \"en\")")
        if source is not None and source not in self.source_languages():
            raise InvalidRequest(f"source_language {source!r} is not supported; use one of "
                                 f"{', '.join(self.source_languages())} or \"auto\"")
        if target == "en":
            task = "transcribe" if source == "en" else "translate"
        elif target == source:
            task = "transcribe"
        else:
            raise InvalidRequest(f"target_language {target!r} is not supported for source {source or 'auto'!r}: "
                                 f"this model set translates any of its source languages to \"en\" "
                                 f"(or transcribes a language into itself; speech out needs a voice for it)")
        if latency_mode not in LATENCY_PROFILES:
            raise InvalidRequest(f"latency_mode {latency_mode!r} unknown; use one of {sorted(LATENCY_PROFILES)}")
        if return_audio or voice:  # a text-only session needs no voice: any language it recognises will do
            voice = voice or self._default_voice(target)
            if voice not in self.voice_info:
                raise InvalidRequest(f"voice {voice!r} not found; available voices: {', '.join(sorted(self.voice_info)) or 'none'}")
            if return_audio and self.voice_info[voice].language != target:
                raise InvalidRequest(f"voice {voice!r} speaks {self.voice_info[voice].language!r}, not {target!r}")
        if not (return_text or return_audio):
            raise InvalidRequest("return_text and return_audio are both false: the stream would return nothing")
        return SessionConfig(source, target, task, voice, self.voice_info[voice].sample_rate_hz if voice else 0,
                             return_text, return_audio, self.latency_profile(latency_mode))

    def latency_profile(self, mode: str) -> LatencyProfile:
        profile = LATENCY_PROFILES[mode].with_overrides(self.config.latency_overrides)
        if profile.policy == "alignatt" and not self.whisper.has_alignment:
            log.warning("latency mode %s asks for AlignAtt but %s has no alignment output (exported before it): "
                        "using LocalAgreement; re-run `relais models prepare`", mode, self.whisper.model_dir)
            profile = dataclasses.replace(profile, policy="local_agreement")
        return profile

    def _default_voice(self, language: str) -> str:
        for name, info in sorted(self.voice_info.items()):
            if info.language == language:
                return name
        raise InvalidRequest(f"no voice speaks {language!r}; available: "
                             f"{', '.join(f'{n} ({i.language})' for n, i in sorted(self.voice_info.items()))}")

    def new_scheduler(self, observer: StageObserver | None = None, wait_observer: StageObserver | None = None,
                      batch_observer: Callable[[str, int], None] | None = None) -> ModelScheduler:
        """The scheduler every stream of one server shares (``observer`` gets each call's stage and compute
        seconds, ``wait_observer`` its stage and seconds queued for a slot, ``batch_observer`` the stage and
        size of each batched call). An export from before per-row decoder inputs cannot batch streams."""
        max_batch = self.config.max_batch
        if max_batch > 1 and not self.whisper.batches_rows:
            log.warning("%s predates per-row decoder inputs: streams are decoded one at a time; re-run "
                        "`relais models prepare` to batch them", self.whisper.model_dir)
            max_batch = 1
        lanes = scheduler_lanes(self.whisper.provider, {"vad": {self.vad.loaded.provider},
                                                        "tts": {v.loaded.provider for v in self.voices.values()}})
        if lanes:
            log.info("model calls of %s run beside Whisper's (another device)", ", ".join(sorted(lanes)))
        return ModelScheduler(self.config.max_concurrent_calls, observer=observer, wait_observer=wait_observer,
                              call_timeout_s=self.config.call_timeout_s, max_batch=max_batch,
                              max_wait_s=self.config.max_batch_wait_s, batch_observer=batch_observer, lanes=lanes)

    def new_session(self, cfg: SessionConfig, scheduler: ModelScheduler) -> StreamingSession:
        """A stream's stages over the shared models, calling them through ``scheduler``."""
        calls = StreamCalls(scheduler)
        policy = self.policy(cfg.latency)
        settings = RecognizerSettings(
            task=cfg.task, source_language=cfg.source_language, target_language=cfg.target_language,
            step_s=cfg.latency.step_s, max_utterance_s=self.config.max_utterance_s,
            encoder_pad_s=self.config.encoder_pad_s, context_tokens=self.config.context_tokens,
            final_beam_size=cfg.latency.beam_size, step_beam_size=cfg.latency.step_beam_size,
            first_step_s=cfg.latency.first_step_s,
            shedding=self.config.load_shedding)
        recognizer = Recognizer(self.whisper, policy, settings, calls, self.vad.window_samples)
        speaker = Speaker(self.voices[cfg.voice], cfg.latency.phrase_max_words, calls,
                          settings=cfg.latency.speech_settings()) if cfg.return_audio else None
        return StreamingSession(self.vad, recognizer, speaker, calls)

    def policy(self, latency: LatencyProfile) -> SimultaneousPolicy:
        tok = self.whisper.tokenizer
        if latency.policy == "alignatt":
            return AlignAttPolicy(frame_threshold=latency.frame_threshold, is_word_start=tok.is_word_start,
                                  is_punctuation=tok.is_punctuation, agreement=latency.agreement,
                                  first_frame_threshold=latency.first_frame_threshold or None,
                                  first_commit_words=latency.first_commit_words)
        hold = max(1, round(latency.max_hold_s / latency.step_s)) if latency.max_hold_s else None
        return LocalAgreementPolicy(n=latency.agreement, is_word_start=tok.is_word_start,
                                    is_punctuation=tok.is_punctuation, max_hold_steps=hold)

    def warm_up(self) -> None:
        """One pass through every model so the first stream pays no start-up cost."""
        start = time.monotonic()
        noise = (np.random.default_rng(0).standard_normal(16000) * 0.01).astype(np.float32)
        self.vad.speech_segments(noise)
        enc = self.whisper.encode(noise, pad_to_s=None)
        self.whisper.greedy(enc, self.whisper.prompt("transcribe", "en"), max_new_tokens=2)
        for tts in self.voices.values():
            tts.synthesize("Ready.")
        log.info("warm-up done in %.2f s", time.monotonic() - start)
