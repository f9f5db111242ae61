"""relais.v1.SpeechTranslator on grpc.aio: one Translate stream = one StreamingSession.

The event loop only moves bytes: decoding is cheap numpy/soxr work, the session's
model work runs in the worker pool (``push_audio`` / ``finish`` are blocking and,
per session, called one at a time). A reader task stamps each chunk with its arrival
wall time, so latencies are measured from when the source audio reached us, not
from when we got round to processing it; audio that piled up while the session was
busy is pushed in one call. Errors are raised, never aborted here: the interceptor
maps them to status codes.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from relais.pipeline.events import SpeechSegment, TextKind, TextSegment
from relais.audio.stream import PIPELINE_RATE_HZ, AudioFormatSpec, InputDecoder, OutputEncoder
from relais.server.interceptor import InvalidRequest, ResourceExhausted, Unavailable
from relais.server.metrics import RelaisMetrics
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LATENCY_MODES = {pb.LATENCY_MODE_UNSPECIFIED: "balanced", pb.LOW_LATENCY: "low",
                 pb.BALANCED: "balanced", pb.HIGH_QUALITY: "quality"}
TEXT_KINDS = {TextKind.SOURCE_PARTIAL: pb.TextEvent.SOURCE_PARTIAL, TextKind.SOURCE_FINAL: pb.TextEvent.SOURCE_FINAL,
              TextKind.TRANSLATION_PARTIAL: pb.TextEvent.TRANSLATION_PARTIAL,
              TextKind.TRANSLATION_FINAL: pb.TextEvent.TRANSLATION_FINAL}
_END = object()


class _ClientGone(Exception):
    """The client cancelled or disconnected: nothing more can be sent, and it is not a server error."""


@dataclass
class Gate:
    """What the server may do now; the app flips it (warming -> serving -> draining)."""

    engine: object | None = None  # TranslationEngine once warm
    phase: str = "warming"
    active: int = 0

    def engine_or_raise(self):
        if self.phase == "draining":
            raise Unavailable("server is shutting down; reconnect (to another replica)")
        if self.phase != "serving" or self.engine is None:
            raise Unavailable("server is warming up (loading models); retry when health reports SERVING")
        return self.engine


@dataclass
class _Plan:
    session_cfg: object
    decoder: InputDecoder
    encoder: OutputEncoder
    return_text: bool
    return_audio: bool


@dataclass
class _Timeline:
    """Arrival wall time of source audio, and the emission times that build the Summary."""

    first_audio_wall: float | None = None
    arrivals_s: list[float] = field(default_factory=list)  # source seconds received after each chunk
    arrivals_wall: list[float] = field(default_factory=list)
    first_final_wall: dict[TextKind, float] = field(default_factory=dict)
    final_lags_s: dict[TextKind, list[float]] = field(default_factory=dict)
    first_speech_wall: float | None = None  # when the audio at the speech onset arrived
    first_audio_out_wall: float | None = None
    compute_s: float = 0.0

    def arrived(self, source_s: float, wall: float) -> None:
        if self.first_audio_wall is None:
            self.first_audio_wall = wall
        self.arrivals_s.append(source_s)
        self.arrivals_wall.append(wall)

    def wall_of(self, source_s: float) -> float:
        """Wall time at which source time ``source_s`` had arrived."""
        i = bisect.bisect_left(self.arrivals_s, source_s - 1e-6)
        return self.arrivals_wall[min(i, len(self.arrivals_wall) - 1)] if self.arrivals_wall else time.monotonic()

    def emission(self, wall: float, source_received_s: float) -> pb.Emission:
        return pb.Emission(wall_s=wall - (self.first_audio_wall or wall), source_received_s=source_received_s)


class SpeechTranslatorServicer(pb_grpc.SpeechTranslatorServicer):
    def __init__(self, gate: Gate, metrics: RelaisMetrics, pool: Executor, *, max_sessions: int,
                 max_session_s: float):
        self.gate, self.metrics, self.pool = gate, metrics, pool
        self.max_sessions, self.max_session_s = max_sessions, max_session_s

    async def ListCapabilities(self, request, context) -> pb.Capabilities:
        caps = self.gate.engine_or_raise().capabilities()
        return pb.Capabilities(
            source_languages=list(caps.source_languages), target_languages=list(caps.target_languages),
            voices=[pb.Voice(name=v.name, language=v.language, sample_rate_hz=int(v.sample_rate_hz))
                    for v in caps.voices],
            models=[pb.ModelInfo(name=m.name, task=m.task, languages=list(m.languages), provenance=m.provenance,
                                 licence=m.licence) for m in caps.models],
            execution_provider=caps.execution_provider)

    async def Translate(self, request_iterator, context) -> None:
        """A coroutine (writes with context.write) so that cancellation always reaches ``finally``."""
        deadline = time.monotonic() + self.max_session_s
        admitted, outcome = False, "error"
        try:
            engine = self.gate.engine_or_raise()
            request_iterator = aiter(request_iterator)  # one iterator, shared with the reader task
            first = await _next_request(request_iterator, deadline, self.max_session_s)
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("the first request must carry a StreamConfig")
            plan = _plan(engine, first.config)
            if self.gate.active >= self.max_sessions:
                raise ResourceExhausted(f"server is at its limit of {self.max_sessions} concurrent sessions "
                                        f"(server.max_sessions); retry later")
            admitted = True
            self.gate.active += 1
            self.metrics.sessions_active.inc()
            await self._run(engine, plan, first.config, request_iterator, context, deadline)
            outcome = "ok"
        except _ClientGone:
            outcome = "cancelled"  # the RPC is already over: nothing to report to anyone
            log.info("client went away mid-stream; session dropped")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (Unavailable, ResourceExhausted):
            outcome = "error" if admitted else "rejected"
            raise
        finally:
            if admitted:
                self.gate.active -= 1
                self.metrics.sessions_active.dec()
            self.metrics.sessions_total.labels(outcome=outcome).inc()

    async def _run(self, engine, plan: _Plan, config: pb.StreamConfig, request_iterator, context, deadline) -> None:
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(self.pool, engine.new_session, plan.session_cfg)
        session_id = uuid.uuid4().hex[:16]
        log.info("session %s started: %s -> %s (%s), client %r", session_id, plan.session_cfg.source_language or "auto",
                 plan.session_cfg.target_language, plan.session_cfg.task, config.client_id)
        await _write(context, pb.TranslateResponse(started=_started(session_id, engine, plan)))
        timeline, queue = _Timeline(), asyncio.Queue()
        reader = asyncio.create_task(_read_audio(request_iterator, plan.decoder, timeline, queue))
        try:
            ended = False
            while not ended:
                items = [await _get_before(queue, deadline, self.max_session_s)]
                while not queue.empty():
                    items.append(queue.get_nowait())
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                ended = items[-1] is _END
                audio = [a for a in items if isinstance(a, np.ndarray) and a.size]
                if ended:
                    audio.append(plan.decoder.flush())
                if audio:
                    await self._push(session, np.concatenate(audio), plan, timeline, context)
            if context.cancelled():  # a cancelled call also ends the request stream
                raise _ClientGone()
            await self._call(session.finish, None, plan, timeline, context, session)
            summary = self._summary(session, plan, timeline)
            await _write(context, pb.TranslateResponse(summary=summary))
            log.info("session %s done: %.1f s in, %.1f s out, rtf %.2f", session_id, summary.audio_in_s,
                     summary.audio_out_s, summary.real_time_factor)
        finally:
            reader.cancel()

    async def _push(self, session, audio: np.ndarray, plan, timeline, context) -> None:
        self.metrics.audio_seconds_total.labels(direction="in").inc(len(audio) / PIPELINE_RATE_HZ)
        await self._call(session.push_audio, audio, plan, timeline, context, session)

    async def _call(self, fn, arg, plan: _Plan, timeline: _Timeline, context, session) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        events = await loop.run_in_executor(self.pool, fn, *(() if arg is None else (arg,)))
        timeline.compute_s += time.monotonic() - started
        now = time.monotonic()
        if timeline.first_speech_wall is None and session.stats.speech_onset_s is not None:
            timeline.first_speech_wall = timeline.wall_of(session.stats.speech_onset_s)
        for event in events:
            response = self._respond(event, plan, timeline, now)
            if response is not None:
                await _write(context, response)

    def _respond(self, event, plan: _Plan, timeline: _Timeline, now: float) -> pb.TranslateResponse | None:
        emitted = timeline.emission(now, event.source_received_s)
        span = pb.TimeSpan(start_s=event.start_s, end_s=event.end_s)
        if isinstance(event, TextSegment):
            if event.kind in (TextKind.SOURCE_FINAL, TextKind.TRANSLATION_FINAL) and event.text.strip():
                timeline.first_final_wall.setdefault(event.kind, now)
                timeline.final_lags_s.setdefault(event.kind, []).append(max(0.0, now - timeline.wall_of(event.end_s)))
            if not plan.return_text:
                return None
            return pb.TranslateResponse(text=pb.TextEvent(kind=TEXT_KINDS[event.kind], text=event.text,
                                                          language=event.language, source_span=span, emitted=emitted))
        if isinstance(event, SpeechSegment):
            if timeline.first_audio_out_wall is None:
                timeline.first_audio_out_wall = now
            self.metrics.audio_seconds_total.labels(direction="out").inc(event.duration_s)
            if not plan.return_audio:
                return None
            start_s = plan.encoder.position_s
            data = plan.encoder.encode(event.audio, event.sample_rate_hz)
            return pb.TranslateResponse(audio=pb.AudioOut(
                data=data, sample_rate_hz=plan.encoder.sample_rate_hz, text=event.text, source_span=span,
                emitted=emitted, output_start_s=start_s))
        log.warning("unknown pipeline event %r dropped", type(event).__name__)
        return None

    def _summary(self, session, plan: _Plan, timeline: _Timeline) -> pb.Summary:
        stats, m = session.stats, self.metrics
        onset = timeline.first_speech_wall
        out_kind = TextKind.TRANSLATION_FINAL if TextKind.TRANSLATION_FINAL in timeline.first_final_wall \
            else TextKind.SOURCE_FINAL
        first_text = _since(onset, timeline.first_final_wall.get(out_kind))
        first_audio = _since(onset, timeline.first_audio_out_wall)
        lags = timeline.final_lags_s.get(out_kind, [])
        audio_in_s = stats.audio_in_s or plan.decoder.frames_in / (plan.decoder.input_rate_hz or PIPELINE_RATE_HZ)
        compute_s = stats.compute_s or timeline.compute_s
        rtf = compute_s / audio_in_s if audio_in_s > 0 else 0.0
        if first_text is not None:
            m.first_text_latency_seconds.observe(first_text)
        if first_audio is not None:
            m.first_audio_latency_seconds.observe(first_audio)
        for lag in lags:
            m.output_lag_seconds.observe(lag)
        if audio_in_s > 0:
            m.real_time_factor.observe(rtf)
        return pb.Summary(
            audio_in_s=audio_in_s, audio_out_s=stats.audio_out_s or plan.encoder.position_s,
            first_text_latency_s=first_text or 0.0, first_audio_latency_s=first_audio or 0.0,
            mean_output_lag_s=float(np.mean(lags)) if lags else 0.0, max_output_lag_s=max(lags, default=0.0),
            real_time_factor=rtf, detected_language=stats.detected_language, translation=stats.translation,
            transcript=stats.transcript)


def _plan(engine, config: pb.StreamConfig) -> _Plan:
    """Validate the StreamConfig (ValueError says what to fix) and build the stream's parts."""
    if not config.target_language.strip():
        raise InvalidRequest('target_language is required (an ISO 639-1 code such as "en"; '
                             'ListCapabilities lists the supported ones)')
    return_text = config.return_text if config.HasField("return_text") else True
    return_audio = config.return_audio if config.HasField("return_audio") else True
    decoder = InputDecoder(_spec(config.input_format))  # format errors first: they need no engine
    session_cfg = engine.session_config(
        source_language=config.source_language.strip().lower() or "auto",
        target_language=config.target_language.strip().lower(),
        voice=config.voice.strip(),
        latency_mode=LATENCY_MODES.get(config.latency_mode, "balanced"),
        return_text=return_text, return_audio=return_audio)
    voice_rate_hz = getattr(session_cfg, "voice_sample_rate_hz", None) or PIPELINE_RATE_HZ
    encoder = OutputEncoder(_spec(config.output_format), voice_rate_hz)
    return _Plan(session_cfg, decoder, encoder, return_text=return_text, return_audio=return_audio)


def _spec(fmt: pb.AudioFormat) -> AudioFormatSpec:
    try:
        name = pb.AudioEncoding.Name(fmt.encoding)
    except ValueError:
        raise InvalidRequest(f"audio encoding {fmt.encoding} is not a known AudioEncoding value") from None
    return AudioFormatSpec(name, fmt.sample_rate_hz, fmt.channels)


def _started(session_id: str, engine, plan: _Plan) -> pb.SessionStarted:
    cfg, caps = plan.session_cfg, engine.capabilities()
    encoding = pb.AudioEncoding.Value(plan.encoder.encoding)
    return pb.SessionStarted(
        session_id=session_id, source_language=cfg.source_language or "", target_language=cfg.target_language,
        task=cfg.task, voice=cfg.voice or "",
        output_format=pb.AudioFormat(encoding=encoding, sample_rate_hz=plan.encoder.sample_rate_hz, channels=1),
        models=[m.name for m in caps.models], execution_provider=caps.execution_provider)


async def _next_request(request_iterator, deadline: float, limit_s: float):
    try:
        return await asyncio.wait_for(anext(request_iterator, None), timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ResourceExhausted(f"no StreamConfig within server.max_session_s={limit_s:g} s") from None


async def _get_before(queue: asyncio.Queue, deadline: float, limit_s: float):
    try:
        return await asyncio.wait_for(queue.get(), timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ResourceExhausted(f"the stream ran past server.max_session_s={limit_s:g} s; "
                                f"open a new stream to continue") from None


async def _read_audio(request_iterator, decoder: InputDecoder, timeline: _Timeline, queue: asyncio.Queue) -> None:
    """Decode chunks as they arrive and stamp them; ends with _END, or with the exception."""
    try:
        async for request in request_iterator:
            if request.WhichOneof("request") != "audio":
                raise InvalidRequest("only the first request may carry a StreamConfig; send AudioChunk after it")
            audio = decoder.decode(request.audio.data)
            timeline.arrived(decoder.received_s, time.monotonic())
            queue.put_nowait(audio)
        queue.put_nowait(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - handed to the session loop, which raises it
        queue.put_nowait(exc)


async def _write(context, response: pb.TranslateResponse) -> None:
    """Send one response; a failed send means the call is over (the client cancelled or vanished,
    possibly before grpc marks the context cancelled), so it is not reported as a server error."""
    try:
        await context.write(response)
    except Exception as exc:  # noqa: BLE001 - grpc raises internal types (ExecuteBatchError, ...)
        log.debug("write failed, treating the client as gone: %r", exc)
        raise _ClientGone() from exc


def _since(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)
