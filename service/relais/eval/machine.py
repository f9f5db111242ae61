"""One line describing the machine a measurement ran on (eval results, benchmark reports)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    """CPU model, visible CPUs, OS and Python, e.g. ``AMD EPYC 7B13, 2 CPUs visible, Linux 6.8.0, Python 3.11.7``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs visible, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")
