"""A streaming client for relais.v1.SpeechTranslator.Translate (used by ``relais translate`` and ``relais eval``).

    with TranslateClient("127.0.0.1:50051") as client:
        result = client.translate_file("talk.wav", TranslateOptions(target_language="en", speed=1.0))
    TranslateClient("relais.example.com:443", tls=ClientTls(ca_file="ca.crt"))   # TLS (client.tls)
    result.translation, result.audio, result.output_sample_rate_hz, result.timings.first_audio_arrival_s

:mod:`relais.client.stream` paces the audio and runs the call; :mod:`relais.client.results`
holds what came back (events stamped on arrival, the assembled speech, timings).
"""

from relais.client.results import (Arrival, AudioReceived, ClientEvent, ClientResult, ClientTimings, ServerSummary,
                                   SessionInfo, TextReceived, assemble_audio)
from relais.client.stream import TranslateClient, TranslateOptions, translate_file
from relais.client.tls import ClientTls

__all__ = ["Arrival", "AudioReceived", "ClientEvent", "ClientResult", "ClientTimings", "ClientTls", "ServerSummary",
           "SessionInfo", "TextReceived", "TranslateClient", "TranslateOptions", "assemble_audio", "translate_file"]
