"""Where every model call of every stream goes through.

Sessions never call a model directly: they hand the call to the engine's
``ModelScheduler``. This first version runs at most ``max_concurrent_calls`` model
calls at a time (1 by default: on CPU each ONNX Runtime call already uses every
core, so running several at once only oversubscribes them) and times each call for
the stage metrics. It is the single seam where cross-stream batching (stack the
decoder steps of several streams into one call) will be added.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class ModelScheduler:
    def __init__(self, max_concurrent_calls: int = 1, observer: Callable[[str, float], None] | None = None):
        if max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        self._slots = threading.BoundedSemaphore(max_concurrent_calls)
        self.observer = observer

    def run(self, stage: str, fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
        """Run ``fn`` when a slot is free; return (result, compute seconds excluding the wait)."""
        with self._slots:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs), time.perf_counter() - start
            finally:
                if self.observer is not None:
                    self.observer(stage, time.perf_counter() - start)
