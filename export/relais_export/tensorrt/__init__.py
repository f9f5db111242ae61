"""TensorRT engines for our ONNX files, with optimisation profiles from their metadata.

An engine is only valid for the GPU model and TensorRT version that built it, so
engines live in a cache keyed by ``<gpu>-sm<cc>_trt<version>/<file>.<onnx sha256>``
(see docs/tensorrt.md). :func:`cache_key` is the one definition of that key; the
container entrypoint (k8s/images/trt_cache_key.py) uses it for ONNX Runtime's engine
cache too, adding the ONNX Runtime and driver versions. ``tensorrt`` is imported
lazily: everything except the build itself (profiles, planning, trtexec commands)
works without it.
"""

from relais_export.tensorrt.build import (
                                             EnginePlan,
                                             build_engine,
                                             build_engines,
                                             import_tensorrt,
                                             plan_engines,
)
from relais_export.tensorrt.device import CudaDevice, cache_key, cuda_device
from relais_export.tensorrt.profiles import (
                                             PROFILED_MODEL_TYPES,
                                             STANDARD_DOMAINS,
                                             WHISPER_PROFILE_KEYS,
                                             ProfileLimits,
                                             ShapeRange,
                                             ort_profile_options,
                                             profiles_from_metadata,
                                             trtexec_command,
)

__all__ = ["CudaDevice", "EnginePlan", "PROFILED_MODEL_TYPES", "ProfileLimits", "STANDARD_DOMAINS", "ShapeRange",
           "WHISPER_PROFILE_KEYS", "build_engine", "build_engines", "cache_key", "cuda_device", "import_tensorrt",
           "ort_profile_options", "plan_engines", "profiles_from_metadata", "trtexec_command"]
