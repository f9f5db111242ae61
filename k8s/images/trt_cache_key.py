#!/usr/bin/env python3
"""Print ROOT/<key>: the TensorRT engine cache directory for this node.

A TensorRT engine only loads on the GPU model (compute capability) and the TensorRT
version that built it, and ONNX Runtime's TensorRT EP names its cache files by model
hash, not by those: so each combination gets its own subdirectory, e.g.

    /var/cache/relais/tensorrt/nvidia-l4-sm89_trt10.7.0_ort1.22.0_drv565.57

The key is relais_export.tensorrt.cache_key (installed in the image with the package),
the same scheme ``relais export tensorrt`` uses for its engine cache.

Nodes with different GPUs, or a new image with other library versions, never read each
other's engines; stale subdirectories can be deleted at any time (docs/operations.md).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from relais_export.tensorrt import cache_key


def _gpu() -> tuple[str, str, str]:
    """(name, compute capability, driver) from nvidia-smi, else the Jetson device tree."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cap, driver = (p.strip() for p in out.splitlines()[0].split(","))
        return name, cap, driver
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    model = Path("/proc/device-tree/model")
    name = model.read_bytes().rstrip(b"\0").decode() if model.exists() else "unknown-gpu"
    release = Path("/etc/nv_tegra_release")
    l4t = re.search(r"R(\d+).*REVISION: ([\d.]+)", release.read_text()) if release.exists() else None
    return name, "", f"l4t{l4t.group(1)}.{l4t.group(2)}" if l4t else ""


def _versions() -> tuple[str, str]:
    try:
        import tensorrt

        trt = tensorrt.__version__
    except ImportError:
        trt = "none"
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "none"
    return trt, ort


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "/var/cache/relais/tensorrt")
    name, cap, driver = _gpu()
    trt, ort = _versions()
    print(root / cache_key(name, cap, trt, ort, driver))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
