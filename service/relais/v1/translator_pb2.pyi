from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM_S16LE: _ClassVar[AudioEncoding]
    PCM_F32LE: _ClassVar[AudioEncoding]
    WAV: _ClassVar[AudioEncoding]

class LatencyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LATENCY_MODE_UNSPECIFIED: _ClassVar[LatencyMode]
    LOW_LATENCY: _ClassVar[LatencyMode]
    BALANCED: _ClassVar[LatencyMode]
    HIGH_QUALITY: _ClassVar[LatencyMode]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding
WAV: AudioEncoding
LATENCY_MODE_UNSPECIFIED: LatencyMode
LOW_LATENCY: LatencyMode
BALANCED: LatencyMode
HIGH_QUALITY: LatencyMode

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz", "channels")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("source_language", "target_language", "input_format", "output_format", "voice", "return_text", "return_audio", "latency_mode", "client_id")
    SOURCE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    RETURN_TEXT_FIELD_NUMBER: _ClassVar[int]
    RETURN_AUDIO_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MODE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    source_language: str
    target_language: str
    input_format: AudioFormat
    output_format: AudioFormat
    voice: str
    return_text: bool
    return_audio: bool
    latency_mode: LatencyMode
    client_id: str
    def __init__(self, source_language: _Optional[str] = ..., target_language: _Optional[str] = ..., input_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., output_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., voice: _Optional[str] = ..., return_text: _Optional[bool] = ..., return_audio: _Optional[bool] = ..., latency_mode: _Optional[_Union[LatencyMode, str]] = ..., client_id: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: AudioChunk
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ...) -> None: ...

class TimeSpan(_message.Message):
    __slots__ = ("start_s", "end_s")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class Emission(_message.Message):
    __slots__ = ("wall_s", "source_received_s")
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RECEIVED_S_FIELD_NUMBER: _ClassVar[int]
    wall_s: float
    source_received_s: float
    def __init__(self, wall_s: _Optional[float] = ..., source_received_s: _Optional[float] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "source_language", "target_language", "task", "voice", "output_format", "models", "execution_provider")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    source_language: str
    target_language: str
    task: str
    voice: str
    output_format: AudioFormat
    models: _containers.RepeatedScalarFieldContainer[str]
    execution_provider: str
    def __init__(self, session_id: _Optional[str] = ..., source_language: _Optional[str] = ..., target_language: _Optional[str] = ..., task: _Optional[str] = ..., voice: _Optional[str] = ..., output_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., execution_provider: _Optional[str] = ...) -> None: ...

class TextEvent(_message.Message):
    __slots__ = ("kind", "text", "language", "source_span", "emitted")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TextEvent.Kind]
        SOURCE_PARTIAL: _ClassVar[TextEvent.Kind]
        SOURCE_FINAL: _ClassVar[TextEvent.Kind]
        TRANSLATION_PARTIAL: _ClassVar[TextEvent.Kind]
        TRANSLATION_FINAL: _ClassVar[TextEvent.Kind]
    KIND_UNSPECIFIED: TextEvent.Kind
    SOURCE_PARTIAL: TextEvent.Kind
    SOURCE_FINAL: TextEvent.Kind
    TRANSLATION_PARTIAL: TextEvent.Kind
    TRANSLATION_FINAL: TextEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SPAN_FIELD_NUMBER: _ClassVar[int]
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    kind: TextEvent.Kind
    text: str
    language: str
    source_span: TimeSpan
    emitted: Emission
    def __init__(self, kind: _Optional[_Union[TextEvent.Kind, str]] = ..., text: _Optional[str] = ..., language: _Optional[str] = ..., source_span: _Optional[_Union[TimeSpan, _Mapping]] = ..., emitted: _Optional[_Union[Emission, _Mapping]] = ...) -> None: ...

class AudioOut(_message.Message):
    __slots__ = ("data", "sample_rate_hz", "text", "source_span", "emitted", "output_start_s")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SPAN_FIELD_NUMBER: _ClassVar[int]
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_START_S_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sample_rate_hz: int
    text: str
    source_span: TimeSpan
    emitted: Emission
    output_start_s: float
    def __init__(self, data: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., text: _Optional[str] = ..., source_span: _Optional[_Union[TimeSpan, _Mapping]] = ..., emitted: _Optional[_Union[Emission, _Mapping]] = ..., output_start_s: _Optional[float] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("audio_in_s", "audio_out_s", "first_text_latency_s", "first_audio_latency_s", "mean_output_lag_s", "max_output_lag_s", "real_time_factor", "detected_language", "translation", "transcript", "degraded_fraction", "queue_wait_s")
    AUDIO_IN_S_FIELD_NUMBER: _ClassVar[int]
    AUDIO_OUT_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_TEXT_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_AUDIO_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_OUTPUT_LAG_S_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_LAG_S_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    DETECTED_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    audio_in_s: float
    audio_out_s: float
    first_text_latency_s: float
    first_audio_latency_s: float
    mean_output_lag_s: float
    max_output_lag_s: float
    real_time_factor: float
    detected_language: str
    translation: str
    transcript: str
    degraded_fraction: float
    queue_wait_s: float
    def __init__(self, audio_in_s: _Optional[float] = ..., audio_out_s: _Optional[float] = ..., first_text_latency_s: _Optional[float] = ..., first_audio_latency_s: _Optional[float] = ..., mean_output_lag_s: _Optional[float] = ..., max_output_lag_s: _Optional[float] = ..., real_time_factor: _Optional[float] = ..., detected_language: _Optional[str] = ..., translation: _Optional[str] = ..., transcript: _Optional[str] = ..., degraded_fraction: _Optional[float] = ..., queue_wait_s: _Optional[float] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("started", "text", "audio", "summary")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    started: SessionStarted
    text: TextEvent
    audio: AudioOut
    summary: Summary
    def __init__(self, started: _Optional[_Union[SessionStarted, _Mapping]] = ..., text: _Optional[_Union[TextEvent, _Mapping]] = ..., audio: _Optional[_Union[AudioOut, _Mapping]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ...) -> None: ...

class ListCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Voice(_message.Message):
    __slots__ = ("name", "language", "sample_rate_hz")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    name: str
    language: str
    sample_rate_hz: int
    def __init__(self, name: _Optional[str] = ..., language: _Optional[str] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task", "languages", "provenance", "licence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    LICENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    provenance: str
    licence: str
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ..., provenance: _Optional[str] = ..., licence: _Optional[str] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("source_languages", "target_languages", "voices", "models", "execution_provider")
    SOURCE_LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    TARGET_LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    VOICES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    source_languages: _containers.RepeatedScalarFieldContainer[str]
    target_languages: _containers.RepeatedScalarFieldContainer[str]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    execution_provider: str
    def __init__(self, source_languages: _Optional[_Iterable[str]] = ..., target_languages: _Optional[_Iterable[str]] = ..., voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., execution_provider: _Optional[str] = ...) -> None: ...
