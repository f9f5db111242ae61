"""``nvidia.riva.asr.RivaSpeechRecognition`` on the StreamHost: transcription of one language.

* ``StreamingRecognize``: streaming_config, then audio_content chunks of any size, paced
  or not; interim results when ``interim_results`` is set, one final per utterance.
* ``Recognize``: the whole file in one request (LINEAR_PCM raw or WAV, MULAW, ALAW, FLAC,
  OGG Opus; ``server.max_message_mb`` bounds its size), run through the same streaming
  session, unpaced; one result per utterance.
* ``GetRivaSpeechRecognitionConfig``: the languages (``catalog``).
"""

from __future__ import annotations

from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc

from relais.errors import InvalidRequest
from relais.pipeline.engine import TranslationEngine
from relais.server.riva import catalog
from relais.server.riva.plans import recognition_plan, streaming_decoder, whole_file_input
from relais.server.riva.results import RecognitionResults, recognize_response
from relais.server.riva.transport import RivaStream, run_stream
from relais.server.streams import StreamHost


def _start_streaming(engine: TranslationEngine, streaming_config: rasr.StreamingRecognitionConfig):
    prefix = "streaming_config.config"
    config = streaming_config.config
    plan, code = recognition_plan(engine, config, streaming_decoder(config, prefix), prefix)
    return plan, RecognitionResults(code, streaming_config.interim_results, config.enable_word_time_offsets)


STREAMING_RECOGNIZE = RivaStream(
    rpc="StreamingRecognize", config_field="streaming_config", start=_start_streaming,
    respond=lambda result: rasr.StreamingRecognizeResponse(results=[result]))


class RivaSpeechRecognitionServicer(rasr_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, host: StreamHost):
        self.host = host

    async def GetRivaSpeechRecognitionConfig(self, request, context) -> rasr.RivaSpeechRecognitionConfigResponse:
        engine, _ = self.host.gate.serving_or_raise()
        return catalog.asr_config(engine, request.model_name)

    async def StreamingRecognize(self, request_iterator, context) -> None:
        await run_stream(self.host, STREAMING_RECOGNIZE, request_iterator, context)

    async def Recognize(self, request: rasr.RecognizeRequest, context) -> rasr.RecognizeResponse:
        host = self.host
        async with host.accounting() as ticket:
            engine, _ = host.gate.serving_or_raise()
            if not request.audio:
                raise InvalidRequest("Recognize: audio is empty; send the whole file in RecognizeRequest.audio")
            decoder, audio = whole_file_input(request.config, request.audio)
            plan, code = recognition_plan(engine, request.config, decoder, "config", default_latency="quality")
            host.admit(ticket)
            session = await host.open_session(ticket, plan, f"riva Recognize {context.peer()}")
            results = RecognitionResults(code, interim=False, word_times=request.config.enable_word_time_offsets)
            finals: list[rasr.StreamingRecognitionResult] = []

            async def send(events, report, now) -> None:
                finals.extend(results.add(events))

            async def whole_file():
                yield audio

            await host.run(ticket, session, plan, whole_file(), send, context.cancelled)
            return recognize_response(finals)
