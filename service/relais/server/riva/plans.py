"""Riva configs -> the stream's plan: the same ``StreamPlan`` relais.v1 builds (input decoder, session
config, output encoder), validated with errors that name Riva's fields.

Input: LINEAR_PCM (raw at ``sample_rate_hertz``, or a WAV file whose header comes first, as
NVIDIA's scripts send it with no encoding and no rate), MULAW and ALAW (G.711). FLAC and
OGG Opus only for ``Recognize``, where the whole file comes in one request. Output speech is
16-bit mono PCM at exactly the requested rate, 44100 Hz when the client asks for 0 (what
NVIDIA's clients assume). ``custom_configuration["latency_mode"]`` (low, balanced, quality)
picks the latency knob; other Riva options that have no meaning here are ignored.
"""

from __future__ import annotations

from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_audio_pb2 as raudio
from riva.client.proto import riva_nmt_pb2 as rnmt

from relais.audio import PIPELINE_RATE_HZ
from relais.audio.files import decode_file_bytes, sniff_container
from relais.audio.stream import (ALAW, MULAW, PCM_F32LE, PCM_S16LE, UNSPECIFIED, AudioFormatSpec, FormatFields,
                                 InputDecoder, OutputEncoder, check_rate)
from relais.errors import InvalidRequest
from relais.pipeline.engine import TranslationEngine
from relais.server.messages import StreamPlan
from relais.server.riva.languages import AUTO, bcp47, check_source, language_of, note_model, voice_name

DEFAULT_OUTPUT_RATE_HZ = 44100  # Riva's speech rate when the client asks for 0
DEFAULT_LANGUAGE_CODE = "en-US"  # Riva's recognition language when none is given
_STREAMED = ("LINEAR_PCM (raw, or a WAV file header first), MULAW or ALAW")
_WHOLE_FILE_ONLY = ("FLAC", "OGGOPUS")


def encoding_name(value: int, field: str) -> str:
    try:
        return raudio.AudioEncoding.Name(value)
    except ValueError:
        raise InvalidRequest(f"{field} {value} is not a known AudioEncoding value") from None


def input_fields(prefix: str) -> FormatFields:
    return FormatFields(encoding=f"{prefix}.encoding", sample_rate=f"{prefix}.sample_rate_hertz",
                        channels=f"{prefix}.audio_channel_count",
                        raw_default="LINEAR_PCM without a WAV header (or send the WAV file itself, header first)")


def streaming_decoder(config: rasr.RecognitionConfig, prefix: str) -> InputDecoder:
    """The decoder for audio streamed in chunks after the config."""
    name = encoding_name(config.encoding, f"{prefix}.encoding")
    if name in _WHOLE_FILE_ONLY:
        raise InvalidRequest(f"{prefix}.encoding {name} is accepted only by Recognize (the whole file in one "
                             f"request); stream {_STREAMED}")
    encoding = {"MULAW": MULAW, "ALAW": ALAW}.get(name, UNSPECIFIED)  # LINEAR_PCM: raw PCM16 unless a WAV header
    return InputDecoder(AudioFormatSpec(encoding, config.sample_rate_hertz, config.audio_channel_count),
                        input_fields(prefix))


def whole_file_input(config: rasr.RecognitionConfig, audio: bytes, prefix: str = "config") -> tuple[InputDecoder, bytes]:
    """Recognize's input: a FLAC or OGG file is decoded whole (soundfile) and handed on as float32;
    anything else goes through the streaming decoder (WAV sniffed, raw PCM, G.711)."""
    name = encoding_name(config.encoding, f"{prefix}.encoding")
    container = sniff_container(audio)
    if name in _WHOLE_FILE_ONLY or (name == "ENCODING_UNSPECIFIED" and container in ("FLAC", "OGG")):
        decoded = decode_file_bytes(audio, f"{name if name in _WHOLE_FILE_ONLY else container} audio")
        check_rate(decoded.sample_rate_hz, "the file's sample rate")
        decoder = InputDecoder(AudioFormatSpec(PCM_F32LE, decoded.sample_rate_hz, 1), input_fields(prefix))
        return decoder, decoded.samples.astype("<f4", copy=False).tobytes()
    return streaming_decoder(config, prefix), audio


def speech_encoder(encoding: int, rate_hz: int, voice_rate_hz: int, prefix: str) -> OutputEncoder:
    """16-bit mono PCM at exactly the requested rate (44100 Hz for 0); ``prefix`` "" for top-level fields."""
    at = f"{prefix}." if prefix else ""
    name = encoding_name(encoding, f"{at}encoding")
    if name not in ("ENCODING_UNSPECIFIED", "LINEAR_PCM"):
        raise InvalidRequest(f"{at}encoding {name} is not supported for speech out; ask for LINEAR_PCM "
                             f"(16-bit mono)")
    rate_hz = rate_hz or DEFAULT_OUTPUT_RATE_HZ
    check_rate(rate_hz, f"{at}sample_rate_hz")
    return OutputEncoder(AudioFormatSpec(PCM_S16LE, rate_hz, 1), voice_rate_hz)


def recognition_plan(engine: TranslationEngine, config: rasr.RecognitionConfig, decoder: InputDecoder,
                     prefix: str, default_latency: str = "balanced") -> tuple[StreamPlan, str]:
    """Transcription of one language into itself (StreamingRecognize, Recognize); also its BCP-47 code.
    Recognize has the whole file, so nothing is gained by committing early: it defaults to quality."""
    code = config.language_code.strip() or DEFAULT_LANGUAGE_CODE
    language = language_of(code, f"{prefix}.language_code")
    if language == AUTO:
        raise InvalidRequest(f"{prefix}.language_code {code!r}: recognition transcribes one given language; "
                             f"to detect the language, use StreamingTranslateSpeechToText into en-US")
    check_source(engine, language, f"{prefix}.language_code", code)
    note_model(engine, config.model, f"{prefix}.model")
    cfg = engine.session_config(source_language=language, target_language=language, return_audio=False,
                                latency_mode=_latency(config, default_latency))
    return StreamPlan(cfg, decoder, OutputEncoder(AudioFormatSpec(), PIPELINE_RATE_HZ)), bcp47(language)


def translation_plan(engine: TranslationEngine, asr: rasr.StreamingRecognitionConfig,
                     translation: rnmt.TranslationConfig, tts: rnmt.SynthesizeSpeechConfig | None,
                     prefix: str = "config") -> tuple[StreamPlan, str]:
    """Speech translation (StreamingTranslateSpeechToText, and ...ToSpeech when ``tts`` is given); also the
    target's BCP-47 code."""
    decoder = streaming_decoder(asr.config, f"{prefix}.asr_config.config")
    src_field, tgt_field = (f"{prefix}.translation_config.source_language_code",
                            f"{prefix}.translation_config.target_language_code")
    src_code = translation.source_language_code.strip() or asr.config.language_code.strip()
    tgt_code = translation.target_language_code.strip() or (tts.language_code.strip() if tts else "")
    source, target = language_of(src_code, src_field), language_of(tgt_code, tgt_field)
    check_source(engine, source, src_field, src_code)
    if target == AUTO or target not in ("en", source):
        raise InvalidRequest(f"{tgt_field} {tgt_code!r} is not supported for source {src_code!r}: this server "
                             f"translates speech from every language it recognises into en-US, or transcribes a "
                             f"language into itself (ListSupportedLanguagePairs lists them)")
    note_model(engine, translation.model_name, f"{prefix}.translation_config.model_name")
    note_model(engine, asr.config.model, f"{prefix}.asr_config.config.model")
    voice = voice_name(engine, tts.voice_name, f"{prefix}.tts_config.voice_name") if tts is not None else ""
    cfg = engine.session_config(source_language=source, target_language=target, voice=voice,
                                return_audio=tts is not None, latency_mode=_latency(asr.config))
    if tts is None:
        encoder = OutputEncoder(AudioFormatSpec(), PIPELINE_RATE_HZ)
    else:
        encoder = speech_encoder(tts.encoding, tts.sample_rate_hz, cfg.voice_sample_rate_hz, f"{prefix}.tts_config")
    return StreamPlan(cfg, decoder, encoder), bcp47(target)


def _latency(config: rasr.RecognitionConfig, default: str = "balanced") -> str:
    return config.custom_configuration.get("latency_mode", default).strip().lower() or default
