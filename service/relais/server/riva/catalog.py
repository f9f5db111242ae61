"""The config RPCs: what this server can do, in Riva's shapes (LiveKit and pipecat call
``GetRivaSynthesisConfig`` at start and fail without it; NVIDIA's scripts list models and
voices with them).

* ASR: one entry per language the recogniser knows, online (streaming) and offline, named
  ``relais-<model>-<code>-asr-streaming`` / ``-asr-offline`` (any model name is accepted
  back: one recogniser serves every language).
* TTS: one entry per voice, ``voice_name`` its name, no subvoices (NVIDIA's talk.py lists it
  as "name."; that form is accepted too).
* Translation: the recogniser's languages -> the languages a voice or text can be produced
  in (Whisper translates into English only); no text-to-text translation model.
"""

from __future__ import annotations

from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_nmt_pb2 as rnmt
from riva.client.proto import riva_tts_pb2 as rtts

from relais.errors import Unimplemented
from relais.pipeline.engine import TranslationEngine
from relais.server.riva.languages import bcp47

_ASR_KINDS = (("online", "streaming", "true"), ("offline", "offline", "false"))


def asr_config(engine: TranslationEngine, model_name: str = "") -> rasr.RivaSpeechRecognitionConfigResponse:
    model = engine.config.asr_model
    configs = []
    for language in engine.source_languages():
        code = bcp47(language)
        for kind, suffix, streaming in _ASR_KINDS:
            name = f"relais-{model}-{code}-asr-{suffix}"
            configs.append(rasr.RivaSpeechRecognitionConfigResponse.Config(model_name=name, parameters={
                "type": kind, "language_code": code, "streaming": streaming, "model_family": model,
                "sample_rate": "16000", "execution_provider": engine.execution_provider}))
    return rasr.RivaSpeechRecognitionConfigResponse(model_config=_only(configs, model_name))


def tts_config(engine: TranslationEngine, model_name: str = "") -> rtts.RivaSynthesisConfigResponse:
    configs = [rtts.RivaSynthesisConfigResponse.Config(model_name=info.name, parameters={
        "language_code": bcp47(info.language), "voice_name": info.name, "subvoices": "",
        "sample_rate": str(info.sample_rate_hz), "type": "offline"})
        for info in sorted(engine.voice_info.values(), key=lambda v: v.name)]
    return rtts.RivaSynthesisConfigResponse(model_config=_only(configs, model_name))


def language_pairs(engine: TranslationEngine) -> rnmt.AvailableLanguageResponse:
    pair = rnmt.AvailableLanguageResponse.LanguagePair(src_lang=engine.source_languages(),
                                                       tgt_lang=engine.target_languages())
    return rnmt.AvailableLanguageResponse(languages={engine.config.asr_model: pair})


def no_text_translation(engine: TranslationEngine) -> Unimplemented:
    targets = ", ".join(bcp47(t) for t in engine.target_languages()) or "none"
    return Unimplemented(
        f"TranslateText: this server has no text-to-text translation model (its model set: "
        f"{', '.join(sorted(engine.model_set.models))}). It translates speech: StreamingTranslateSpeechToText "
        f"and StreamingTranslateSpeechToSpeech from any of {len(engine.source_languages())} languages into {targets} "
        f"(ListSupportedLanguagePairs)")


def _only(configs: list, model_name: str) -> list:
    """All configs, or the one named (Riva's request filter); an unknown name gives them all."""
    named = [c for c in configs if c.model_name == model_name.strip()]
    return named or configs
