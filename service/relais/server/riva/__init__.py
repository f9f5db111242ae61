"""NVIDIA Riva's wire protocol on Relais's gRPC port: a thin adapter onto the same StreamHost.

Unmodified Riva clients (NVIDIA's ``riva.client`` and its scripts, LiveKit's and pipecat's
NVIDIA plugins) talk to Relais by changing the address: the three services below share
relais.v1's sessions, admission, drain, metrics and error mapping (the server's one
interceptor). The message definitions are those published in ``nvidia-riva-client``
(``relais[riva]``); without that package the server runs without them and says so.

    asr        RivaSpeechRecognition  StreamingRecognize, Recognize, GetRivaSpeechRecognitionConfig
    nmt        RivaTranslation        StreamingTranslateSpeechToText / ...ToSpeech,
                                      ListSupportedLanguagePairs, TranslateText (UNIMPLEMENTED)
    tts        RivaSpeechSynthesis    Synthesize, SynthesizeOnline, GetRivaSynthesisConfig
    plans      Riva configs -> StreamPlan (codecs, languages, voices), errors naming Riva's fields
    results    pipeline events -> Riva results and speech chunks
    catalog    the config RPCs' answers
    languages  BCP-47 codes, model and voice names
    transport  the streaming RPC loop shared by the three services

``nvidia-riva-client`` also ships a ``grpc.health.v1`` module of its own
(``riva.client.proto.health_pb2``) that cannot be imported next to ``grpc_health``: nothing
here imports it. See docs/riva.md.
"""

from __future__ import annotations

import logging

import grpc

from relais.server.streams import StreamHost

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'relais[riva]' (nvidia-riva-client)"


def add_riva_services(server: grpc.aio.Server, host: StreamHost) -> list[str]:
    """Register Riva's services on ``server``; their full names (for reflection and health), or [] when
    nvidia-riva-client is not installed."""
    try:
        from riva.client.proto import riva_asr_pb2, riva_asr_pb2_grpc, riva_nmt_pb2, riva_nmt_pb2_grpc, \
            riva_tts_pb2, riva_tts_pb2_grpc
    except ImportError as exc:
        log.info("Riva API off (%s): %s", exc, INSTALL_HINT)
        return []
    from relais.server.riva.asr import RivaSpeechRecognitionServicer
    from relais.server.riva.nmt import RivaTranslationServicer
    from relais.server.riva.tts import RivaSpeechSynthesisServicer

    riva_asr_pb2_grpc.add_RivaSpeechRecognitionServicer_to_server(RivaSpeechRecognitionServicer(host), server)
    riva_nmt_pb2_grpc.add_RivaTranslationServicer_to_server(RivaTranslationServicer(host), server)
    riva_tts_pb2_grpc.add_RivaSpeechSynthesisServicer_to_server(RivaSpeechSynthesisServicer(host), server)
    return [module.DESCRIPTOR.services_by_name[name].full_name for module, name in (
        (riva_asr_pb2, "RivaSpeechRecognition"), (riva_nmt_pb2, "RivaTranslation"),
        (riva_tts_pb2, "RivaSpeechSynthesis"))]
