"""Running translation streams, whatever the transport (gRPC, Riva's API, WebSocket).

A transport turns its first message into a ``StreamPlan`` (``messages.plan_stream``
for relais.v1), then hands ``StreamHost`` the rest of its input as an async iterator
of audio bytes and a ``send`` coroutine for what comes back. The host owns what
every transport must share: the serving gate (warming / serving / draining),
admission (``max_sessions``), the time limits (``max_session_s``, ``idle_timeout_s``:
DEADLINE_EXCEEDED), the session's life in the worker pool, the wall-clock report the
Summary is built from, the session metrics and outcomes.

The event loop only moves bytes: decoding is cheap numpy/soxr work, the session's
model work runs in the worker pool (``push_audio`` / ``finish`` are blocking and,
per session, called one at a time). A reader task stamps each chunk with its arrival
wall time, so latencies are measured from when the source audio reached us; audio
that piled up while the session was busy is pushed in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from relais.audio.stream import PIPELINE_RATE_HZ, InputDecoder
from relais.errors import (DeadlineExceeded, InvalidRequest, ModelCallTimeout, PermissionDenied, ResourceExhausted,
                           Unauthenticated, Unavailable)
from relais.pipeline.engine import TranslationEngine
from relais.pipeline.events import PipelineEvent, SpeechSegment
from relais.pipeline.scheduler import LOAD_WINDOW_S, ModelScheduler
from relais.pipeline.session import StreamingSession
from relais.server.auth import CURRENT_GRANT
from relais.server.messages import StreamPlan
from relais.server.metrics import RelaisMetrics
from relais.server.report import StreamReport, StreamSummary

log = logging.getLogger(__name__)

_END = object()
# What a transport is handed for each session call: the events and the wall time they are sent.
Send = Callable[[list[PipelineEvent], StreamReport, float], Awaitable[None]]


class ClientGone(Exception):
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


@dataclass
class StreamTicket:
    """One stream's passage through the host: its deadline, when the client last sent something, and
    whether it holds a session slot."""

    deadline: float
    heard_at: float  # monotonic time of the client's last message (the idle timeout counts from it)
    admitted: bool = False
    admitted_at: float = 0.0  # monotonic
    session_id: str = ""
    session: StreamingSession | None = None  # once opened


def capacity_refusal(utilisation: float, streams: int, max_load: float, *, shedding: bool,
                     exhausted: int, expected: float = 0.0, young: int = 0, new_cost: float = 0.0) -> str | None:
    """Why a new stream would make the running ones miss their pace (None: admit it).

    The measure lags a burst of starts. While ``young`` streams started within the load window,
    ``expected`` is the running streams' load: what the older ones computed in the window, and
    ``new_cost`` for each young one (what a real-time stream costs once it sheds all it may: a file
    sent as fast as possible may take more while the scheduler is free, but gives it up under
    load). A stream is then refused when ``expected`` plus its own ``new_cost`` exceeds ``max_load``.

    Otherwise, with load shedding, a busy scheduler is not yet full: streams can still decide
    less often. The server is full when the scheduler is busy (``utilisation`` >= ``max_load``)
    and some stream already sheds all it may (``exhausted`` streams at their largest step).
    Without shedding, a stream is refused when one more like the running ones would push the
    measured utilisation past ``max_load``."""
    window = f"{utilisation:.0%} busy over the last {LOAD_WINDOW_S:.0f} s with {streams} streams"
    if young and expected + new_cost > max_load:
        return (f"its {streams} streams are expected to keep it {expected:.0%} busy ({young} of them started in the "
                f"last {LOAD_WINDOW_S:.0f} s and count at least load.new_stream_cost {new_cost:.0%}), so one more "
                f"would need about {expected + new_cost:.0%} (load.admit_max_load {max_load:.0%})")
    if shedding:
        if utilisation >= max_load and exhausted:
            return (f"its model scheduler was {window}, and {exhausted} of them already decide as rarely as "
                    f"load shedding allows (load.shed_max_stretch; load.admit_max_load {max_load:.0%})")
        return None
    projected = utilisation * (streams + 1) / streams
    if projected > max_load:
        return (f"its model scheduler was {window}, and one more would need about {projected:.0%} "
                f"(load.admit_max_load {max_load:.0%})")
    return None


class AudioQueue:
    """The reader's hand-off to the session loop, bounded in seconds of audio.

    Audio may arrive faster than real time (a file sent as fast as possible): it is accepted,
    and paced. Once ``max_s`` seconds wait for the session, the reader stops taking chunks from
    the client until the session has caught up, so the transport's flow control slows the
    sender down; nothing is dropped, and memory holds at most ``max_s`` of audio per stream."""

    def __init__(self, max_s: float):
        self.max_s = max_s
        self.queued_s = 0.0
        self._items: asyncio.Queue = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    async def put_audio(self, audio: np.ndarray) -> None:
        self._items.put_nowait(audio)
        self.queued_s += len(audio) / PIPELINE_RATE_HZ
        if self.queued_s > self.max_s:
            self._room.clear()
            await self._room.wait()

    def put_nowait(self, item) -> None:
        """The end marker or the reader's exception (no audio)."""
        self._items.put_nowait(item)

    async def get(self):
        return self._taken(await self._items.get())

    def get_nowait(self):
        return self._taken(self._items.get_nowait())

    def empty(self) -> bool:
        return self._items.empty()

    def _taken(self, item):
        if isinstance(item, np.ndarray):
            self.queued_s = max(0.0, self.queued_s - len(item) / PIPELINE_RATE_HZ)
            if self.queued_s <= self.max_s:
                self._room.set()
        return item


class StreamHost:
    def __init__(self, gate: Gate, metrics: RelaisMetrics, pool: Executor, *, max_sessions: int,
                 max_session_s: float, idle_timeout_s: float, admit_max_load: float = 0.0, new_stream_cost: float = 0.0,
                 send_timeout_s: float = 30.0, max_backlog_s: float = 20.0):
        self.gate, self.metrics, self.pool = gate, metrics, pool
        self.max_sessions, self.max_session_s, self.idle_timeout_s = max_sessions, max_session_s, idle_timeout_s
        self.admit_max_load, self.new_stream_cost = admit_max_load, new_stream_cost
        self.send_timeout_s, self.max_backlog_s = send_timeout_s, max_backlog_s
        self._tickets: dict[int, StreamTicket] = {}  # the admitted streams, by id() of their ticket

    @contextlib.asynccontextmanager
    async def accounting(self) -> AsyncIterator[StreamTicket]:
        """Wrap a whole stream: counts its outcome (ok, cancelled, client_error, error, rejected) and frees
        its slot; "error" is kept for the server's own faults, which is what RelaisStreamErrorsHigh alerts on.
        A client that went away ends the stream quietly (``ClientGone`` is swallowed)."""
        now = time.monotonic()
        ticket = StreamTicket(deadline=now + self.max_session_s, heard_at=now)
        outcome = "error"
        try:
            yield ticket
            outcome = "ok"
        except ClientGone:
            outcome = "cancelled"  # the call is already over: nothing to report to anyone
            log.info("client went away mid-stream; session %s dropped", ticket.session_id or "(none)")
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ModelCallTimeout:
            raise  # the server's fault: counted as "error"
        except (Unavailable, ResourceExhausted):
            # a refused start is "rejected"; an admitted stream cut off by a limit (its token's quota, not
            # reading its responses) ended by the client's doing, like one that sent something invalid
            outcome = "client_error" if ticket.admitted else "rejected"
            raise
        except (InvalidRequest, DeadlineExceeded, Unauthenticated, PermissionDenied):
            outcome = "client_error"  # idle or over max_session_s, bad config or audio, token refused
            raise
        finally:
            if ticket.admitted:
                self.gate.active -= 1
                self.metrics.sessions_active.dec()
                self._tickets.pop(id(ticket), None)
            self.metrics.sessions_total.labels(outcome=outcome).inc()

    def admit(self, ticket: StreamTicket) -> None:
        """Take a session slot, or refuse with RESOURCE_EXHAUSTED."""
        if self.gate.active >= self.max_sessions:
            raise ResourceExhausted(f"server is at its limit of {self.max_sessions} concurrent sessions "
                                    f"(server.max_sessions); retry later")
        if self.admit_max_load and self.gate.scheduler is not None and self.gate.active:
            sessions = [t.session for t in self._tickets.values() if t.session is not None]
            shedding = self.gate.engine is not None and self.gate.engine.config.load_shedding is not None
            now = time.monotonic()
            expected, young = 0.0, 0
            for t in self._tickets.values():  # the running streams only: not those that ended in the window
                if now - t.admitted_at < LOAD_WINDOW_S and self.new_stream_cost:
                    young += 1
                    expected += self.new_stream_cost
                elif t.session is not None:
                    expected += t.session.calls.recent_load(now)
            refusal = capacity_refusal(self.gate.scheduler.utilisation(now), self.gate.active, self.admit_max_load,
                                       shedding=shedding, exhausted=sum(s.shedding_exhausted for s in sessions),
                                       expected=expected, young=young, new_cost=self.new_stream_cost)
            if refusal:
                raise ResourceExhausted(f"server is at its measured capacity: {refusal}; retry later or on "
                                        f"another replica")
        ticket.admitted, ticket.admitted_at = True, time.monotonic()
        self._tickets[id(ticket)] = ticket
        self.gate.active += 1
        self.metrics.sessions_active.inc()

    async def open_session(self, ticket: StreamTicket, plan: StreamPlan, client: str) -> StreamingSession:
        engine, scheduler = self.gate.serving_or_raise()
        session = await asyncio.get_running_loop().run_in_executor(
            self.pool, engine.new_session, plan.session_cfg, scheduler)
        ticket.session_id = uuid.uuid4().hex[:16]
        ticket.session = session
        cfg = plan.session_cfg
        log.info("session %s started: %s -> %s (%s), client %r", ticket.session_id, cfg.source_language or "auto",
                 cfg.target_language, cfg.task, client)
        return session

    async def next_before_deadline(self, iterator: AsyncIterator, ticket: StreamTicket, what: str):
        """The iterator's next item (None at its end), or DEADLINE_EXCEEDED: nothing for idle_timeout_s,
        or past max_session_s."""
        try:
            item = await asyncio.wait_for(anext(iterator, None), timeout=self._time_left(ticket))
        except asyncio.TimeoutError:
            raise self._expired(ticket, what) from None
        ticket.heard_at = time.monotonic()
        return item

    async def run(self, ticket: StreamTicket, session: StreamingSession, plan: StreamPlan,
                  chunks: AsyncIterator[bytes], send: Send, cancelled: Callable[[], bool]) -> StreamSummary:
        """Feed ``chunks`` to the session, ``send`` what each call produced; the stream's summary."""
        report, queue = StreamReport(sink=self.metrics), AudioQueue(self.max_backlog_s)
        ticket.heard_at = time.monotonic()  # opening the session was our time, not the client's silence
        reader = asyncio.create_task(_read_audio(chunks, plan.decoder, report, queue, ticket))
        self.metrics.live.add(report)
        session.calls.ahead_of_real_time = report.ahead_of_real_time_s  # real-time streams' calls go first
        session.calls.behind_real_time = report.lag_s  # load shedding: has it fallen behind?
        try:
            ended, taken = False, 0
            while not ended:
                items = [await self._get_before(queue, ticket)]
                while not queue.empty():
                    items.append(queue.get_nowait())
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                ended = items[-1] is _END
                taken += sum(isinstance(item, np.ndarray) for item in items)
                audio = [a for a in items if isinstance(a, np.ndarray) and a.size]
                if ended:
                    audio.append(plan.decoder.flush())
                audio = [a for a in audio if a.size]
                if audio:
                    samples = np.concatenate(audio)
                    if (grant := CURRENT_GRANT.get()) is not None:
                        grant.charge(len(samples) / PIPELINE_RATE_HZ)  # the token's daily quota
                    report.audio_in_s += len(samples) / PIPELINE_RATE_HZ
                    self.metrics.audio_seconds_total.labels(direction="in").inc(len(samples) / PIPELINE_RATE_HZ)
                    await self._call(session.push_audio, (samples,), report, send)
                report.processed(taken)
            if cancelled():  # a cancelled call also ends the request stream
                raise ClientGone()
            await self._call(session.finish, (), report, send)
            summary = report.summary()
            self.metrics.record_stream(summary)
            log.info("session %s done: %.1f s in, %.1f s out, rtf %.2f", ticket.session_id, summary.audio_in_s,
                     summary.audio_out_s, summary.real_time_factor)
            return summary
        finally:
            reader.cancel()
            self.metrics.live.discard(report)

    async def _call(self, fn, args: tuple, report: StreamReport, send: Send) -> None:
        """Run one session call in the worker pool and send what it produced: committed text as soon
        as the call hands it over (``emit``), before its speech is synthesised, then the rest."""
        loop = asyncio.get_running_loop()
        early: asyncio.Queue[list] = asyncio.Queue()

        def emit(events: list) -> None:  # the worker thread: hand over to the loop, in order
            loop.call_soon_threadsafe(early.put_nowait, events)

        job = loop.run_in_executor(self.pool, functools.partial(fn, *args, emit=emit))
        taking: asyncio.Future | None = None
        try:
            while not job.done():
                taking = asyncio.ensure_future(early.get())
                await asyncio.wait((job, taking), return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():
                    break
                events, taking = taking.result(), None
                await self._send_events(events, report, send)
        finally:
            if taking is not None:
                taking.cancel()
        while not early.empty():  # handed over just before the call returned
            await self._send_events(early.get_nowait(), report, send)
        await self._send_events(await job, report, send)

    async def _send_events(self, events: list, report: StreamReport, send: Send) -> None:
        now = time.monotonic()
        report.observe(events, now)
        for event in events:
            if isinstance(event, SpeechSegment):
                self.metrics.audio_seconds_total.labels(direction="out").inc(event.duration_s)
        await self.deliver(send(events, report, now))

    async def deliver(self, sending: Awaitable[None]) -> None:
        """Await a transport's send, or cut the stream off with RESOURCE_EXHAUSTED when the client has
        not taken it for send_timeout_s: a client that stops reading holds at most what the transport
        buffers (flow control stops the writes), never a growing queue."""
        try:
            await asyncio.wait_for(sending, timeout=self.send_timeout_s)
        except asyncio.TimeoutError:
            raise ResourceExhausted(
                f"the client has not read the responses for {self.send_timeout_s:g} s (server.send_timeout_s): "
                f"read the response stream while sending audio") from None

    async def _get_before(self, queue: AudioQueue, ticket: StreamTicket):
        """The reader's next item; it stamps ``heard_at`` as chunks arrive, so audio that arrived while
        the session was busy counts as heard."""
        if not queue.empty() and time.monotonic() < ticket.deadline:  # audio is waiting: the client is
            # not idle, however long the session's last call took
            return queue.get_nowait()
        try:
            return await asyncio.wait_for(queue.get(), timeout=self._time_left(ticket))
        except asyncio.TimeoutError:
            raise self._expired(ticket, "audio") from None

    def _time_left(self, ticket: StreamTicket) -> float:
        """Seconds until the first of the stream's two deadlines: the session's end, or the idle limit."""
        return max(0.0, min(ticket.deadline, ticket.heard_at + self.idle_timeout_s) - time.monotonic())

    def _expired(self, ticket: StreamTicket, what: str) -> DeadlineExceeded:
        """The error for a wait that ran out, naming the limit that did it."""
        if ticket.deadline <= ticket.heard_at + self.idle_timeout_s:
            return DeadlineExceeded(f"the stream ran past server.max_session_s={self.max_session_s:g} s; "
                                    f"open a new stream to continue")
        return DeadlineExceeded(f"no {what} for {self.idle_timeout_s:g} s (server.idle_timeout_s)")


async def _read_audio(chunks: AsyncIterator[bytes], decoder: InputDecoder, report: StreamReport,
                      queue: AudioQueue, ticket: StreamTicket) -> None:
    """Decode chunks as they arrive and stamp them; ends with _END, or with the exception."""
    try:
        async for data in chunks:
            audio = decoder.decode(data)
            ticket.heard_at = time.monotonic()
            report.arrived(decoder.received_s, ticket.heard_at)
            await queue.put_audio(audio)  # waits while the session is max_backlog_s behind (pacing)
            ticket.heard_at = time.monotonic()  # ...which is the server's time, not the client's silence
        queue.put_nowait(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - handed to the session loop, which raises it
        queue.put_nowait(exc)
