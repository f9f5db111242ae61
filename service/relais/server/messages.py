"""relais.v1 messages <-> the pipeline's types: a stream's plan from its StreamConfig, and
the responses built from pipeline events and the stream's summary."""

from __future__ import annotations

from dataclasses import dataclass

from relais.audio.stream import PIPELINE_RATE_HZ, AudioFormatSpec, InputDecoder, OutputEncoder
from relais.errors import InvalidRequest
from relais.pipeline.engine import EngineCapabilities, SessionConfig, TranslationEngine
from relais.pipeline.events import PipelineEvent, SpeechSegment, TextSegment
from relais.server.report import StreamReport, StreamSummary
from relais.v1 import translator_pb2 as pb
from relais.wire import TEXT_KIND_TO_PB, latency_mode_name


@dataclass
class StreamPlan:
    """What one Translate stream was asked for, validated, with its audio codecs."""

    session_cfg: SessionConfig
    decoder: InputDecoder
    encoder: OutputEncoder

    @property
    def return_text(self) -> bool:
        return self.session_cfg.return_text

    @property
    def return_audio(self) -> bool:
        return self.session_cfg.return_audio


def plan_stream(engine: TranslationEngine, config: pb.StreamConfig) -> StreamPlan:
    """Validate the StreamConfig (InvalidRequest says what to fix) and build the stream's codecs."""
    if not config.target_language.strip():
        raise InvalidRequest('target_language is required (an ISO 639-1 code such as "en"; '
                             'ListCapabilities lists the supported ones)')
    decoder = InputDecoder(_spec(config.input_format))  # format errors first: they need no engine
    session_cfg = engine.session_config(
        source_language=config.source_language.strip().lower() or "auto",
        target_language=config.target_language.strip().lower(),
        voice=config.voice.strip(),
        latency_mode=latency_mode_name(config.latency_mode),
        return_text=config.return_text if config.HasField("return_text") else True,
        return_audio=config.return_audio if config.HasField("return_audio") else True)
    encoder = OutputEncoder(_spec(config.output_format), session_cfg.voice_sample_rate_hz or PIPELINE_RATE_HZ)
    return StreamPlan(session_cfg, decoder, encoder)


def _spec(fmt: pb.AudioFormat) -> AudioFormatSpec:
    try:
        name = pb.AudioEncoding.Name(fmt.encoding)
    except ValueError:
        raise InvalidRequest(f"audio encoding {fmt.encoding} is not a known AudioEncoding value") from None
    return AudioFormatSpec(name, fmt.sample_rate_hz, fmt.channels)


def capabilities_message(caps: EngineCapabilities) -> pb.Capabilities:
    return pb.Capabilities(
        source_languages=list(caps.source_languages), target_languages=list(caps.target_languages),
        voices=[pb.Voice(name=v.name, language=v.language, sample_rate_hz=int(v.sample_rate_hz))
                for v in caps.voices],
        models=[pb.ModelInfo(name=m.name, task=m.task, languages=list(m.languages), provenance=m.provenance,
                             licence=m.licence) for m in caps.models],
        execution_provider=caps.execution_provider)


def started_message(session_id: str, caps: EngineCapabilities, plan: StreamPlan) -> pb.SessionStarted:
    cfg = plan.session_cfg
    return pb.SessionStarted(
        session_id=session_id, source_language=cfg.source_language or "", target_language=cfg.target_language,
        task=cfg.task, voice=cfg.voice or "",
        output_format=pb.AudioFormat(encoding=pb.AudioEncoding.Value(plan.encoder.encoding),
                                     sample_rate_hz=plan.encoder.sample_rate_hz, channels=1),
        models=[m.name for m in caps.models], execution_provider=caps.execution_provider)


def event_response(event: PipelineEvent, plan: StreamPlan, report: StreamReport,
                   now: float) -> pb.TranslateResponse | None:
    """The response for a text or speech event the client asked for (None for the rest)."""
    if isinstance(event, TextSegment) and plan.return_text:
        return pb.TranslateResponse(text=pb.TextEvent(
            kind=TEXT_KIND_TO_PB[event.kind], text=event.text, language=event.language,
            source_span=pb.TimeSpan(start_s=event.start_s, end_s=event.end_s),
            emitted=_emission(report, now, event.source_received_s)))
    if isinstance(event, SpeechSegment) and plan.return_audio:
        start_s = plan.encoder.position_s
        data = plan.encoder.encode(event.audio, event.sample_rate_hz)
        return pb.TranslateResponse(audio=pb.AudioOut(
            data=data, sample_rate_hz=plan.encoder.sample_rate_hz, text=event.text,
            source_span=pb.TimeSpan(start_s=event.start_s, end_s=event.end_s),
            emitted=_emission(report, now, event.source_received_s), output_start_s=start_s))
    return None


def _emission(report: StreamReport, now: float, source_received_s: float) -> pb.Emission:
    return pb.Emission(wall_s=report.since_start(now), source_received_s=source_received_s)


def summary_message(summary: StreamSummary) -> pb.Summary:
    return pb.Summary(
        audio_in_s=summary.audio_in_s, audio_out_s=summary.audio_out_s,
        first_text_latency_s=summary.first_text_latency_s or 0.0,
        first_audio_latency_s=summary.first_audio_latency_s or 0.0,
        mean_output_lag_s=summary.mean_output_lag_s, max_output_lag_s=summary.max_output_lag_s,
        real_time_factor=summary.real_time_factor, detected_language=summary.detected_language,
        translation=summary.translation, transcript=summary.transcript,
        degraded_fraction=summary.degraded_fraction, queue_wait_s=summary.queue_wait_s)
