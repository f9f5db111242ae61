"""Where every model call of every stream goes through.

Stages never call a model directly: they hand the call to the server's
``ModelScheduler`` (through their stream's ``StreamCalls``). This version runs at most
``max_concurrent_calls`` model calls at a time (1 by default: on CPU each ONNX Runtime
call already uses every core, so running several at once only oversubscribes them)
and times each call for the stage metrics (``observer``, given when the scheduler is
built) and each wait for a slot (``wait_observer``: how long calls queue behind others).

Cross-stream batching (``run_batched``): calls of one kind (the Whisper decodes) that queue
at the same time run as one call over all of them, up to ``max_batch``: the first to queue
leads, waits for a slot (and up to ``max_wait_s`` for the batch to fill, when another stream
made a call of its kind in the last ``PEER_WINDOW_S``: a lone stream never waits), takes every
request of its kind queued by then and hands each its own result. The leader waits behind
the calls already queued when it arrived (not in its step's place), so on a busy server the
other streams' encoder passes run first and their decodes join the same batch. A batch
that raises is run again one request at a time, so one stream's fault stays its own.

A freed slot is handed to a waiting call, never to a caller that arrives as it frees: a plain
semaphore let a stream with a backlog (audio sent 20x faster than real time) take the slot
again at each of its back-to-back calls while real-time streams waited (``FairSlots``). The
waiting call served first is that of a stream not ahead of real time over one that is, then
that of the session call (a stream's push of audio) that began first, so one step's calls
(VAD, encoder, decoder, voice) run back to back rather than interleaved with later steps'.

Lanes (``lanes``, stage -> lane): stages on different devices need not wait for each other. On
a GPU host the voice and the VAD run on the CPU while Whisper runs on the GPU
(docs/benchmarks.md, "On a GPU"), so the engine gives the CPU stages a lane of their own, with
its own ``max_concurrent_calls`` slots. Without lanes (a CPU host) every stage shares one.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from relais.errors import ModelCallTimeout
from relais.runtime.ort import CallGuard

log = logging.getLogger(__name__)

T = TypeVar("T")
StageObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Timed(Generic[T]):
    value: T
    seconds: float  # compute time, excluding the wait for a slot
    waited: float = 0.0  # time queued for a slot


DEFAULT_LANE = "models"
PEER_WINDOW_S = 3.0  # a stream that decoded this recently may join a batch (balanced: a decode every 1-3 s)
LOAD_WINDOW_S = 10.0  # utilisation is measured over the calls that ended in this window


class FairSlots:
    """``n`` slots. A call that finds one free and nobody waiting takes it; otherwise it queues,
    and each release hands the slot straight to the first waiter in (``ahead_s``, ``began``,
    arrival) order, so no caller can barge in between a release and the waiter it wakes."""

    def __init__(self, n: int):
        self._free = n
        self._lock = threading.Lock()
        self._waiting: list[tuple[float, float, int, threading.Event]] = []  # heap: order, then wake-up
        self._arrivals = itertools.count()

    def acquire(self, ahead_s: float = 0.0, began: float | None = None) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            granted = threading.Event()
            began = time.monotonic() if began is None else began
            heapq.heappush(self._waiting, (ahead_s, began, next(self._arrivals), granted))
        granted.wait()  # the releaser handed its slot over: _free was not incremented

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                heapq.heappop(self._waiting)[-1].set()
            else:
                self._free += 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)


@dataclass
class _Queued:
    """One request of :meth:`ModelScheduler.run_batched`, waiting for its batch."""

    item: object
    ahead_s: float
    began: float | None
    asked: float  # time.perf_counter() when queued
    queued_at: float  # time.monotonic() when queued
    ready: threading.Event
    peers: bool = True  # other streams made calls of this kind lately: worth holding for a batch
    lead: bool = False  # woken to lead the next batch rather than with a result
    value: object = None
    error: BaseException | None = None
    seconds: float = 0.0
    waited: float = 0.0


class ModelScheduler:
    def __init__(self, max_concurrent_calls: int = 1, observer: StageObserver | None = None,
                 wait_observer: StageObserver | None = None, call_timeout_s: float = 0.0,
                 max_batch: int = 1, max_wait_s: float = 0.0,
                 batch_observer: Callable[[str, int], None] | None = None, lanes: dict[str, str] | None = None):
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_s >= 0, got {max_batch} and {max_wait_s}")
        self.max_concurrent_calls = max_concurrent_calls
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._batch_observer = batch_observer
        self._queued: dict[object, list[_Queued]] = {}  # per kind of batched call: requests not yet taken
        self._leading: set[object] = set()  # kinds whose next batch has a leader
        self._callers: dict[object, dict[int, float]] = {}  # per kind: id(caller) -> last call (monotonic)
        self._queue_changed = threading.Condition(threading.Lock())
        self.call_timeout_s = call_timeout_s  # > 0: ONNX Runtime runs past it are terminated (CallGuard)
        self.lanes = dict(lanes or {})  # stage -> lane; stages not named share the default lane
        self._slots = {lane: FairSlots(max_concurrent_calls) for lane in {DEFAULT_LANE, *self.lanes.values()}}
        self._observer = observer
        self._wait_observer = wait_observer
        self._lock = threading.Lock()
        # per lane: (end, compute seconds) of the calls that ended in the last LOAD_WINDOW_S
        self._calls: dict[str, collections.deque[tuple[float, float]]] = {lane: collections.deque()
                                                                         for lane in self._slots}
        self._created = time.monotonic()

    def run(self, stage: str, fn: Callable[..., T], *args, ahead_s: float = 0.0, began: float | None = None,
            **kwargs) -> Timed[T]:
        """Run ``fn`` when a slot is free. With calls waiting, the order is: ``ahead_s`` (how far the
        calling stream's audio is ahead of real time), then ``began`` (when the session call this one
        belongs to began, time.monotonic(); default now), then arrival."""
        asked = time.perf_counter()
        slots = self._lane_slots(stage)
        slots.acquire(ahead_s, began)
        try:
            start = time.perf_counter()
            if self._wait_observer is not None:
                self._wait_observer(stage, start - asked)
            value = self._call(stage, fn, *args, **kwargs)
            seconds = time.perf_counter() - start
        finally:
            slots.release()
        return Timed(value, seconds, start - asked)

    def _lane_slots(self, stage: str) -> FairSlots:
        return self._slots[self.lanes.get(stage, DEFAULT_LANE)]

    def run_batched(self, stage: str, fn: Callable[[list], list[T]], item, *, ahead_s: float = 0.0,
                    began: float | None = None, caller: object = None) -> Timed[T]:
        """``fn([item, ...])[i]`` for this ``item``, computed in one call with the requests of the same
        ``stage`` and ``fn`` queued meanwhile (at most ``max_batch``). ``seconds`` is this item's share
        of the call's compute; the order against other calls is :meth:`run`'s. ``caller`` (the
        stream) lets a batch wait for others only while other streams make such calls."""
        kind = (stage, fn)
        me = _Queued(item, ahead_s, began, time.perf_counter(), time.monotonic(), threading.Event())
        with self._queue_changed:
            callers = self._callers.setdefault(kind, {})
            for key in [k for k, last in callers.items() if last < me.queued_at - PEER_WINDOW_S]:
                del callers[key]  # streams that ended or went quiet
            callers[id(caller)] = me.queued_at
            me.peers = caller is None or len(callers) > 1  # anonymous calls: assume company
            queue = self._queued.setdefault(kind, [])
            queue.append(me)
            me.lead = kind not in self._leading
            if me.lead:
                self._leading.add(kind)
            self._queue_changed.notify_all()
        if not me.lead:
            me.ready.wait()  # a leader ran us, or made us the next leader
        if me.lead:
            self._lead(stage, fn, kind, me)
        if me.error is not None:
            raise me.error
        return Timed(me.value, me.seconds, me.waited)

    def _lead(self, stage: str, fn: Callable[[list], list], kind: object, me: _Queued) -> None:
        hold_start = hold_end = time.perf_counter()
        if self.max_wait_s > 0 and me.peers:  # let the batch fill
            deadline = time.monotonic() + self.max_wait_s
            with self._queue_changed:
                while len(self._queued[kind]) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._queue_changed.wait(left)
            hold_end = time.perf_counter()
        batch: list[_Queued] = [me]
        finished = False
        # A batch leader queues for the slot as of when it queued, not as of when its step began: calls
        # already waiting then (other streams' encoder passes) go first, and their decodes join its batch.
        slots = self._lane_slots(stage)
        slots.acquire(me.ahead_s, me.queued_at if self.max_batch > 1 else me.began)
        try:
            with self._queue_changed:
                queue = self._queued[kind]
                batch, self._queued[kind] = queue[: self.max_batch], queue[self.max_batch:]
                if self._queued[kind]:  # the rest get a leader of their own, next in line for a slot
                    self._queued[kind][0].lead = True
                    self._queued[kind][0].ready.set()
                else:
                    self._leading.discard(kind)
            start = time.perf_counter()
            for queued in batch:  # waits for the slot; holding for the batch to fill is not one
                queued.waited = start - queued.asked - max(0.0, hold_end - max(queued.asked, hold_start))
                if self._wait_observer is not None:
                    self._wait_observer(stage, queued.waited)
            if self._batch_observer is not None:
                self._batch_observer(stage, len(batch))
            try:
                values = self._call(stage, fn, [q.item for q in batch])
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, ModelCallTimeout):  # a stuck model: no second wait
                    for queued in batch:
                        queued.error = exc
                else:  # whose request failed? each alone (still holding the slot) finds out
                    log.warning("a batch of %d %s calls failed (%s); running them one by one", len(batch), stage,
                                type(exc).__name__)
                    for queued in batch:
                        try:
                            queued.value = self._call(stage, fn, [queued.item])[0]
                        except Exception as single:
                            queued.error = single
                values = None
            seconds = (time.perf_counter() - start) / len(batch)
            for i, queued in enumerate(batch):
                if values is not None:
                    queued.value = values[i]
                queued.seconds = seconds
            finished = True
        finally:
            slots.release()
            for queued in batch:  # whatever happened, nobody is left waiting
                if not finished and queued.error is None:
                    queued.error = RuntimeError(f"the batched {stage} call did not finish")
                queued.lead = False
                if queued is not me:
                    queued.ready.set()

    def _call(self, stage: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` under the call timeout, timed for the stage metrics and the utilisation."""
        start = time.perf_counter()
        try:
            with CallGuard(self.call_timeout_s) as guard:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if guard.expired:
                        raise ModelCallTimeout(
                            f"a model call ({stage}) ran past load.call_timeout_s={self.call_timeout_s:g} s "
                            f"and was stopped; the server is overloaded or a model is stuck: retry, and tell "
                            f"the operator if it repeats") from exc
                    raise
        finally:
            seconds = time.perf_counter() - start
            self._record(stage, seconds)
            if self._observer is not None:
                self._observer(stage, seconds)

    def _record(self, stage: str, seconds: float) -> None:
        now = time.monotonic()
        calls = self._calls[self.lanes.get(stage, DEFAULT_LANE)]
        with self._lock:
            calls.append((now, seconds))
            while calls and calls[0][0] < now - LOAD_WINDOW_S:
                calls.popleft()

    def utilisation(self, now: float | None = None) -> float:
        """Share of the slots' time spent computing over the last LOAD_WINDOW_S seconds (0..1; a
        scheduler younger than the window is measured over its life). With lanes, the busiest
        lane's: it is the one that runs out first."""
        now = time.monotonic() if now is None else now
        window = min(LOAD_WINDOW_S, max(now - self._created, 1e-3))
        with self._lock:
            # a call that began before the window counts only its part inside it
            busy = max(sum(min(seconds, end - (now - window)) for end, seconds in calls if now - window <= end <= now)
                       for calls in self._calls.values())
        return min(1.0, busy / (window * self.max_concurrent_calls))


class StreamCalls:
    """One stream's door to the scheduler: runs its model calls and adds up their compute by stage."""

    def __init__(self, scheduler: ModelScheduler):
        self._scheduler = scheduler
        self._spent: dict[str, float] = {}
        self.waited_s = 0.0  # queued for a slot, all this stream's calls so far
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (end, compute seconds)
        # how far the stream's audio is ahead of real time (set by the server; ModelScheduler.run)
        self.ahead_of_real_time: Callable[[], float] | None = None
        # how long the oldest audio of the running session call has waited (set by the server; load shedding)
        self.behind_real_time: Callable[[], float] | None = None
        self._began: float | None = None  # when the session call now running began (begin())

    def begin(self) -> None:
        """A session call (push of audio, end of stream) begins: its model calls queue as of now."""
        self._began = time.monotonic()

    def lag(self) -> float | None:
        """Seconds the stream is behind real time, None where no server measures it."""
        return self.behind_real_time() if self.behind_real_time is not None else None

    def run(self, stage: str, fn: Callable[..., T], *args, **kwargs) -> T:
        ahead_s = self.ahead_of_real_time() if self.ahead_of_real_time is not None else 0.0
        return self._account(stage, self._scheduler.run(stage, fn, *args, ahead_s=ahead_s, began=self._began,
                                                        **kwargs))

    def _account(self, stage: str, timed: Timed[T]) -> T:
        self._spent[stage] = self._spent.get(stage, 0.0) + timed.seconds
        self.waited_s += timed.waited
        now = time.monotonic()
        self._recent.append((now, timed.seconds))
        while self._recent[0][0] < now - LOAD_WINDOW_S:
            self._recent.popleft()
        return timed.value

    def run_batched(self, stage: str, fn: Callable[[list], list[T]], item) -> T:
        """:meth:`ModelScheduler.run_batched` for this stream (its share of the batch's compute)."""
        ahead_s = self.ahead_of_real_time() if self.ahead_of_real_time is not None else 0.0
        return self._account(stage, self._scheduler.run_batched(stage, fn, item, ahead_s=ahead_s, began=self._began,
                                                                caller=self))

    def recent_load(self, now: float | None = None) -> float:
        """This stream's share of one model slot over the last LOAD_WINDOW_S (what it adds to the
        scheduler's utilisation; a stream younger than the window shows only what it did so far)."""
        now = time.monotonic() if now is None else now
        return sum(seconds for end, seconds in self._recent if end >= now - LOAD_WINDOW_S) / LOAD_WINDOW_S

    def take_spent(self) -> dict[str, float]:
        """Compute by stage since the last call (and reset)."""
        spent, self._spent = self._spent, {}
        return spent
