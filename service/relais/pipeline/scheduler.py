"""Where every model call of every stream goes through.

Stages never call a model directly: they hand the call to the server's
``ModelScheduler`` (through their stream's ``StreamCalls``). This version runs at most
``max_concurrent_calls`` model calls at a time (1 by default: on CPU each ONNX Runtime
call already uses every core, so running several at once only oversubscribes them)
and times each call for the stage metrics (``observer``, given when the scheduler is
built) and each wait for a slot (``wait_observer``: how long calls queue behind others). It is the single seam where cross-stream batching (stack the decoder steps of
several streams into one call) will be added.

A freed slot is handed to a waiting call, never to a caller that arrives as it frees: a plain
semaphore let a stream with a backlog (audio sent 20x faster than real time) take the slot
again at each of its back-to-back calls while real-time streams waited (``FairSlots``). The
waiting call served first is that of a stream not ahead of real time over one that is, then
that of the session call (a stream's push of audio) that began first, so one step's calls
(VAD, encoder, decoder, voice) run back to back rather than interleaved with later steps'.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from relais.errors import ModelCallTimeout
from relais.runtime.ort import CallGuard

T = TypeVar("T")
StageObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Timed(Generic[T]):
    value: T
    seconds: float  # compute time, excluding the wait for a slot
    waited: float = 0.0  # time queued for a slot


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


class ModelScheduler:
    def __init__(self, max_concurrent_calls: int = 1, observer: StageObserver | None = None,
                 wait_observer: StageObserver | None = None, call_timeout_s: float = 0.0):
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        self.max_concurrent_calls = max_concurrent_calls
        self.call_timeout_s = call_timeout_s  # > 0: ONNX Runtime runs past it are terminated (CallGuard)
        self._slots = FairSlots(max_concurrent_calls)
        self._observer = observer
        self._wait_observer = wait_observer
        self._lock = threading.Lock()
        self._calls: collections.deque[tuple[float, float]] = collections.deque()  # (end, compute seconds)
        self._created = time.monotonic()

    def run(self, stage: str, fn: Callable[..., T], *args, ahead_s: float = 0.0, began: float | None = None,
            **kwargs) -> Timed[T]:
        """Run ``fn`` when a slot is free. With calls waiting, the order is: ``ahead_s`` (how far the
        calling stream's audio is ahead of real time), then ``began`` (when the session call this one
        belongs to began, time.monotonic(); default now), then arrival."""
        asked = time.perf_counter()
        self._slots.acquire(ahead_s, began)
        try:
            start = time.perf_counter()
            if self._wait_observer is not None:
                self._wait_observer(stage, start - asked)
            try:
                with CallGuard(self.call_timeout_s) as guard:
                    try:
                        value = fn(*args, **kwargs)
                    except Exception as exc:
                        if guard.expired:
                            raise ModelCallTimeout(
                                f"a model call ({stage}) ran past load.call_timeout_s={self.call_timeout_s:g} s "
                                f"and was stopped; the server is overloaded or a model is stuck: retry, and tell "
                                f"the operator if it repeats") from exc
                        raise
            finally:
                seconds = time.perf_counter() - start
                self._record(seconds)
                if self._observer is not None:
                    self._observer(stage, seconds)
        finally:
            self._slots.release()
        return Timed(value, seconds, start - asked)

    def _record(self, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._calls.append((now, seconds))
            while self._calls and self._calls[0][0] < now - LOAD_WINDOW_S:
                self._calls.popleft()

    def utilisation(self, now: float | None = None) -> float:
        """Share of the slots' time spent computing over the last LOAD_WINDOW_S seconds (0..1; a
        scheduler younger than the window is measured over its life)."""
        now = time.monotonic() if now is None else now
        window = min(LOAD_WINDOW_S, max(now - self._created, 1e-3))
        with self._lock:
            # a call that began before the window counts only its part inside it
            busy = sum(min(seconds, end - (now - window)) for end, seconds in self._calls
                       if now - window <= end <= now)
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
        self._began: float | None = None  # when the session call now running began (begin())

    def begin(self) -> None:
        """A session call (push of audio, end of stream) begins: its model calls queue as of now."""
        self._began = time.monotonic()

    def run(self, stage: str, fn: Callable[..., T], *args, **kwargs) -> T:
        ahead_s = self.ahead_of_real_time() if self.ahead_of_real_time is not None else 0.0
        timed = self._scheduler.run(stage, fn, *args, ahead_s=ahead_s, began=self._began, **kwargs)
        self._spent[stage] = self._spent.get(stage, 0.0) + timed.seconds
        self.waited_s += timed.waited
        now = time.monotonic()
        self._recent.append((now, timed.seconds))
        while self._recent[0][0] < now - LOAD_WINDOW_S:
            self._recent.popleft()
        return timed.value

    def recent_load(self, now: float | None = None) -> float:
        """This stream's share of one model slot over the last LOAD_WINDOW_S (what it adds to the
        scheduler's utilisation; a stream younger than the window shows only what it did so far)."""
        now = time.monotonic() if now is None else now
        return sum(seconds for end, seconds in self._recent if end >= now - LOAD_WINDOW_S) / LOAD_WINDOW_S

    def take_spent(self) -> dict[str, float]:
        """Compute by stage since the last call (and reset)."""
        spent, self._spent = self._spent, {}
        return spent
