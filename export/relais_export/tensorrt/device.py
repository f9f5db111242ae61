"""The GPU an engine is built for, and the cache key that names its engines."""

from __future__ import annotations

import ctypes
import logging
import os
import re
from dataclasses import dataclass

from relais_export.errors import ExportError

log = logging.getLogger(__name__)

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-") or "unknown"


def cache_key(gpu_name: str, compute_capability: str, trt_version: str, ort_version: str = "",
              driver_version: str = "") -> str:
    """One path component naming what an engine is valid for, e.g. ``nvidia-l4-sm89_trt10.9.0``
    (+ ``_ort<version>_drv<version>`` for ONNX Runtime's own engine cache)."""
    sm = "sm" + compute_capability.replace(".", "") if compute_capability else "smunknown"
    parts = [f"{_slug(gpu_name)}-{sm}", "trt" + _slug(trt_version)]
    if ort_version:
        parts.append("ort" + _slug(ort_version))
    if driver_version:
        parts.append("drv" + _slug(driver_version))
    return "_".join(parts)


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: str  # e.g. "9.0"


def cuda_device(device_id: int = 0) -> CudaDevice:
    """Name and compute capability of a GPU, from the CUDA driver (no CUDA toolkit needed)."""
    try:
        lib = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError as exc:
        raise ExportError("no NVIDIA driver (libcuda) found: TensorRT engines must be built on the GPU "
                          "that will run them") from exc
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise ExportError("the CUDA driver reports no usable GPU")
    if not 0 <= device_id < count.value:
        raise ExportError(f"GPU {device_id} does not exist (this machine has {count.value})")
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGet(ctypes.byref(dev), device_id)
    lib.cuDeviceGetName(name, 256, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return CudaDevice(name.value.decode(errors="replace").strip(), f"{major.value}.{minor.value}")

