"""Give freed C heap back to the operating system (glibc's ``malloc_trim``).

With ONNX Runtime's CPU arena off, every tensor is a plain malloc/free. glibc keeps freed
blocks inside its per-thread arenas and only returns the top of each one, so after a burst of
large, oddly sized buffers (a long utterance's encoder pass, many streams ending at once) the
resident size stays at its high-water mark. ``malloc_trim(0)`` walks every arena and releases
the free pages in the middle as well. It is a no-op where the C library has no such call
(musl, macOS): :func:`heap_trimmer` then returns None and the server skips the timer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def heap_trimmer() -> Callable[[], float] | None:
    """A function that trims the heap and returns how long that took (s); None without glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> float:
        started = time.perf_counter()
        trim(0)
        return time.perf_counter() - started

    return run
