"""``nvidia.riva.nmt.RivaTranslation`` on the StreamHost: speech translation.

* ``StreamingTranslateSpeechToText``: config (asr_config + translation_config), then
  audio_content; results as StreamingRecognize's, in the target language.
* ``StreamingTranslateSpeechToSpeech``: config (+ tts_config), then audio_content; the
  translated speech as 16-bit PCM at ``tts_config.sample_rate_hz`` (44100 for 0), phrase by
  phrase, an empty chunk at each sentence end.
* ``ListSupportedLanguagePairs``: the recogniser's languages -> English.
* ``TranslateText``: UNIMPLEMENTED (no text-to-text model), naming what the server can do.
"""

from __future__ import annotations

from riva.client.proto import riva_nmt_pb2 as rnmt
from riva.client.proto import riva_nmt_pb2_grpc as rnmt_grpc

from relais.pipeline.engine import TranslationEngine
from relais.server.riva import catalog
from relais.server.riva.plans import translation_plan
from relais.server.riva.results import RecognitionResults, SpeechResponses
from relais.server.riva.transport import RivaStream, run_stream
from relais.server.streams import StreamHost


def _start_s2t(engine: TranslationEngine, config: rnmt.StreamingTranslateSpeechToTextConfig):
    plan, code = translation_plan(engine, config.asr_config, config.translation_config, None)
    asr = config.asr_config
    return plan, RecognitionResults(code, asr.interim_results, asr.config.enable_word_time_offsets)


def _start_s2s(engine: TranslationEngine, config: rnmt.StreamingTranslateSpeechToSpeechConfig):
    plan, _ = translation_plan(engine, config.asr_config, config.translation_config, config.tts_config)
    return plan, SpeechResponses(plan.encoder)


SPEECH_TO_TEXT = RivaStream(
    rpc="StreamingTranslateSpeechToText", config_field="config", start=_start_s2t,
    respond=lambda result: rnmt.StreamingTranslateSpeechToTextResponse(results=[result]))
SPEECH_TO_SPEECH = RivaStream(
    rpc="StreamingTranslateSpeechToSpeech", config_field="config", start=_start_s2s,
    respond=lambda speech: rnmt.StreamingTranslateSpeechToSpeechResponse(speech=speech))


class RivaTranslationServicer(rnmt_grpc.RivaTranslationServicer):
    def __init__(self, host: StreamHost):
        self.host = host

    async def ListSupportedLanguagePairs(self, request, context) -> rnmt.AvailableLanguageResponse:
        engine, _ = self.host.gate.serving_or_raise()
        return catalog.language_pairs(engine)

    async def TranslateText(self, request, context) -> rnmt.TranslateTextResponse:
        engine, _ = self.host.gate.serving_or_raise()
        raise catalog.no_text_translation(engine)

    async def StreamingTranslateSpeechToText(self, request_iterator, context) -> None:
        await run_stream(self.host, SPEECH_TO_TEXT, request_iterator, context)

    async def StreamingTranslateSpeechToSpeech(self, request_iterator, context) -> None:
        await run_stream(self.host, SPEECH_TO_SPEECH, request_iterator, context)
