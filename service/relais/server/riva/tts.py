"""``nvidia.riva.tts.RivaSpeechSynthesis``: the engine's Piper voices, through the model scheduler.

* ``Synthesize``: the whole text's speech in one response.
* ``SynthesizeOnline``: stream to stream (older clients send one request and read a
  stream: the same call on the wire); each request's text is spoken sentence by sentence,
  one response per sentence, as soon as it is ready.
* ``GetRivaSynthesisConfig``: the voices (``catalog``).

Speech is 16-bit mono PCM at ``sample_rate_hz`` (44100 for 0). ``voice_name`` picks one of
the voices (an unknown name, such as NVIDIA's "Magpie-Multilingual.EN-US.Aria", falls back
to the default voice of ``language_code``). Each call holds a session slot while it runs
(``server.max_sessions``), like a stream; the voice runs in the worker pool and its time is
the ``tts`` stage's.
"""

from __future__ import annotations

import asyncio

import numpy as np
from riva.client.proto import riva_tts_pb2 as rtts
from riva.client.proto import riva_tts_pb2_grpc as rtts_grpc

from relais.audio.stream import OutputEncoder
from relais.errors import InvalidRequest
from relais.pipeline.engine import TranslationEngine
from relais.pipeline.scheduler import ModelScheduler
from relais.runtime.tts import PiperTts, split_sentences
from relais.server.riva import catalog
from relais.server.riva.languages import bcp47, language_of, voice_name
from relais.server.riva.plans import speech_encoder
from relais.server.riva.transport import write
from relais.server.streams import ClientGone, StreamHost

MAX_TEXT_CHARS = 10_000  # one request's text


class RivaSpeechSynthesisServicer(rtts_grpc.RivaSpeechSynthesisServicer):
    def __init__(self, host: StreamHost):
        self.host = host

    async def GetRivaSynthesisConfig(self, request, context) -> rtts.RivaSynthesisConfigResponse:
        engine, _ = self.host.gate.serving_or_raise()
        return catalog.tts_config(engine, request.model_name)

    async def Synthesize(self, request: rtts.SynthesizeSpeechRequest, context) -> rtts.SynthesizeSpeechResponse:
        host = self.host
        async with host.accounting() as ticket:
            engine, scheduler = host.gate.serving_or_raise()
            voice, encoder = _voice_and_encoder(engine, request)
            sentences = _sentences(request.text, required=True)
            host.admit(ticket)
            audio = [await self._speak(scheduler, voice, s) for s in sentences]
            data = encoder.encode(np.concatenate(audio), voice.sample_rate_hz)
            return rtts.SynthesizeSpeechResponse(audio=data, meta=rtts.SynthesizeSpeechResponseMetadata(
                text=request.text, processed_text=" ".join(sentences)))

    async def SynthesizeOnline(self, request_iterator, context) -> None:
        host = self.host
        async with host.accounting() as ticket:
            host.gate.serving_or_raise()
            requests = aiter(request_iterator)
            while (request := await host.next_before_deadline(requests, ticket, "SynthesizeSpeechRequest")) is not None:
                engine, scheduler = host.gate.serving_or_raise()
                voice, encoder = _voice_and_encoder(engine, request)
                if not ticket.admitted:
                    host.admit(ticket)
                for sentence in _sentences(request.text, required=False):
                    audio = await self._speak(scheduler, voice, sentence)
                    await write(context, rtts.SynthesizeSpeechResponse(
                        audio=encoder.encode(audio, voice.sample_rate_hz),
                        meta=rtts.SynthesizeSpeechResponseMetadata(text=sentence, processed_text=sentence)))
                    if context.cancelled():
                        raise ClientGone()

    async def _speak(self, scheduler: ModelScheduler, voice: PiperTts, sentence: str) -> np.ndarray:
        timed = await asyncio.get_running_loop().run_in_executor(
            self.host.pool, scheduler.run, "tts", voice.synthesize, sentence)
        self.host.metrics.audio_seconds_total.labels(direction="out").inc(len(timed.value) / voice.sample_rate_hz)
        return timed.value


def _voice_and_encoder(engine: TranslationEngine, request: rtts.SynthesizeSpeechRequest) -> tuple[PiperTts, OutputEncoder]:
    language = language_of(request.language_code, "language_code", default="en")
    name = voice_name(engine, request.voice_name, "voice_name")
    if not name:
        spoken = sorted(n for n, info in engine.voice_info.items() if info.language == language)
        if not spoken:
            voices = ", ".join(f"{n} ({bcp47(i.language)})" for n, i in sorted(engine.voice_info.items()))
            raise InvalidRequest(f"language_code {request.language_code!r}: no voice speaks it; voices: {voices}")
        name = spoken[0]
    voice = engine.voices[name]
    return voice, speech_encoder(request.encoding, request.sample_rate_hz, voice.sample_rate_hz, "")


def _sentences(text: str, required: bool) -> list[str]:
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"text is {len(text)} characters; send at most {MAX_TEXT_CHARS} per request")
    sentences = split_sentences(text)
    if required and not sentences:
        raise InvalidRequest("text is empty; nothing to synthesize")
    return sentences
