"""relais.v1.SpeechTranslator on grpc.aio: transport only, one Translate stream = one StreamingSession.

The event loop only moves bytes: decoding is cheap numpy/soxr work, the session's
model work runs in the worker pool (``push_audio`` / ``finish`` are blocking and,
per session, called one at a time). A reader task stamps each chunk with its arrival
wall time, so latencies are measured from when the source audio reached us, not
from when we got round to processing it; audio that piled up while the session was
busy is pushed in one call. Every event the session returns goes to the stream's
``StreamReport`` (which the Summary and the per-stream metrics are built from) and,
if the client asked for it, out as a response (``messages``). Errors are raised,
never aborted here: the interceptor maps them to status codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from relais.audio.stream import PIPELINE_RATE_HZ, InputDecoder
from relais.errors import InvalidRequest, ResourceExhausted, Unavailable
from relais.pipeline.engine import TranslationEngine
from relais.pipeline.events import SpeechSegment
from relais.pipeline.scheduler import ModelScheduler
from relais.pipeline.session import StreamingSession
from relais.server.messages import (StreamPlan, capabilities_message, event_response, plan_stream, started_message,
                                    summary_message)
from relais.server.metrics import RelaisMetrics
from relais.server.report import StreamReport, StreamSummary
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END = object()


class _ClientGone(Exception):
    """The client cancelled or disconnected: nothing more can be sent, and it is not a server error."""


@dataclass
class Gate:
    """What the server may do now; the app flips it (warming -> serving -> draining)."""

    engine: TranslationEngine | None = None  # set once warm
    scheduler: ModelScheduler | None = None  # every stream's model calls go through it
    phase: str = "warming"
    active: int = 0

    def serving_or_raise(self) -> tuple[TranslationEngine, ModelScheduler]:
        if self.phase == "draining":
            raise Unavailable("server is shutting down; reconnect (to another replica)")
        if self.phase != "serving" or self.engine is None or self.scheduler is None:
            raise Unavailable("server is warming up (loading models); retry when health reports SERVING")
        return self.engine, self.scheduler


class SpeechTranslatorServicer(pb_grpc.SpeechTranslatorServicer):
    def __init__(self, gate: Gate, metrics: RelaisMetrics, pool: Executor, *, max_sessions: int,
                 max_session_s: float):
        self.gate, self.metrics, self.pool = gate, metrics, pool
        self.max_sessions, self.max_session_s = max_sessions, max_session_s

    async def ListCapabilities(self, request, context) -> pb.Capabilities:
        engine, _ = self.gate.serving_or_raise()
        return capabilities_message(engine.capabilities())

    async def Translate(self, request_iterator, context) -> None:
        """A coroutine (writes with context.write) so that cancellation always reaches ``finally``."""
        deadline = time.monotonic() + self.max_session_s
        admitted, outcome = False, "error"
        try:
            engine, scheduler = self.gate.serving_or_raise()
            request_iterator = aiter(request_iterator)  # one iterator, shared with the reader task
            first = await _next_request(request_iterator, deadline, self.max_session_s)
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("the first request must carry a StreamConfig")
            plan = plan_stream(engine, first.config)
            if self.gate.active >= self.max_sessions:
                raise ResourceExhausted(f"server is at its limit of {self.max_sessions} concurrent sessions "
                                        f"(server.max_sessions); retry later")
            admitted = True
            self.gate.active += 1
            self.metrics.sessions_active.inc()
            session = await asyncio.get_running_loop().run_in_executor(
                self.pool, engine.new_session, plan.session_cfg, scheduler)
            session_id = uuid.uuid4().hex[:16]
            log.info("session %s started: %s -> %s (%s), client %r", session_id,
                     plan.session_cfg.source_language or "auto", plan.session_cfg.target_language,
                     plan.session_cfg.task, first.config.client_id)
            await _write(context, pb.TranslateResponse(started=started_message(session_id, engine.capabilities(),
                                                                               plan)))
            summary = await self._run(session, plan, request_iterator, context, deadline)
            log.info("session %s done: %.1f s in, %.1f s out, rtf %.2f", session_id, summary.audio_in_s,
                     summary.audio_out_s, summary.real_time_factor)
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

    async def _run(self, session: StreamingSession, plan: StreamPlan, request_iterator, context,
                   deadline: float) -> StreamSummary:
        report, queue = StreamReport(), asyncio.Queue()
        reader = asyncio.create_task(_read_audio(request_iterator, plan.decoder, report, queue))
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
                audio = [a for a in audio if a.size]
                if audio:
                    samples = np.concatenate(audio)
                    report.audio_in_s += len(samples) / PIPELINE_RATE_HZ
                    self.metrics.audio_seconds_total.labels(direction="in").inc(len(samples) / PIPELINE_RATE_HZ)
                    await self._call(session.push_audio, (samples,), plan, report, context)
            if context.cancelled():  # a cancelled call also ends the request stream
                raise _ClientGone()
            await self._call(session.finish, (), plan, report, context)
            summary = report.summary()
            self.metrics.record_stream(summary)
            await _write(context, pb.TranslateResponse(summary=summary_message(summary)))
            return summary
        finally:
            reader.cancel()

    async def _call(self, fn, args: tuple, plan: StreamPlan, report: StreamReport, context) -> None:
        """Run one session call in the worker pool and send what it produced."""
        events = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        now = time.monotonic()
        report.observe(events, now)
        for event in events:
            if isinstance(event, SpeechSegment):
                self.metrics.audio_seconds_total.labels(direction="out").inc(event.duration_s)
            response = event_response(event, plan, report, now)
            if response is not None:
                await _write(context, response)


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


async def _read_audio(request_iterator, decoder: InputDecoder, report: StreamReport, queue: asyncio.Queue) -> None:
    """Decode chunks as they arrive and stamp them; ends with _END, or with the exception."""
    try:
        async for request in request_iterator:
            if request.WhichOneof("request") != "audio":
                raise InvalidRequest("only the first request may carry a StreamConfig; send AudioChunk after it")
            audio = decoder.decode(request.audio.data)
            report.arrived(decoder.received_s, time.monotonic())
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
