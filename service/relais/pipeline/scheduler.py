"""Where every model call of every stream goes through.

Stages never call a model directly: they hand the call to the server's
``ModelScheduler`` (through their stream's ``StreamCalls``). This version runs at most
``max_concurrent_calls`` model calls at a time (1 by default: on CPU each ONNX Runtime
call already uses every core, so running several at once only oversubscribes them)
and times each call for the stage metrics (``observer``, given when the scheduler is
built) and each wait for a slot (``wait_observer``: how long calls queue behind others). It is the single seam where cross-stream batching (stack the decoder steps of
several streams into one call) will be added.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
StageObserver = Callable[[str, float], None]


@dataclass(frozen=True)
class Timed(Generic[T]):
    value: T
    seconds: float  # compute time, excluding the wait for a slot


class ModelScheduler:
    def __init__(self, max_concurrent_calls: int = 1, observer: StageObserver | None = None,
                 wait_observer: StageObserver | None = None):
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        self._slots = threading.BoundedSemaphore(max_concurrent_calls)
        self._observer = observer
        self._wait_observer = wait_observer

    def run(self, stage: str, fn: Callable[..., T], *args, **kwargs) -> Timed[T]:
        """Run ``fn`` when a slot is free."""
        asked = time.perf_counter()
        with self._slots:
            start = time.perf_counter()
            if self._wait_observer is not None:
                self._wait_observer(stage, start - asked)
            try:
                value = fn(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - start
                if self._observer is not None:
                    self._observer(stage, seconds)
        return Timed(value, seconds)


class StreamCalls:
    """One stream's door to the scheduler: runs its model calls and adds up their compute by stage."""

    def __init__(self, scheduler: ModelScheduler):
        self._scheduler = scheduler
        self._spent: dict[str, float] = {}

    def run(self, stage: str, fn: Callable[..., T], *args, **kwargs) -> T:
        timed = self._scheduler.run(stage, fn, *args, **kwargs)
        self._spent[stage] = self._spent.get(stage, 0.0) + timed.seconds
        return timed.value

    def take_spent(self) -> dict[str, float]:
        """Compute by stage since the last call (and reset)."""
        spent, self._spent = self._spent, {}
        return spent
