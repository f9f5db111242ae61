"""Optimisation profiles from our ONNX metadata, as TensorRT, trtexec and ONNX Runtime take them.

The profiles themselves live in the service (``relais.runtime.trt_profiles``), which hands
them to ONNX Runtime's TensorRT provider; this module adds the trtexec command line and
reports a metadata problem as an ``ExportError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from relais.models.metadata import ModelFacts
from relais.runtime import trt_profiles
from relais.runtime.trt_profiles import (PROFILED_MODEL_TYPES, STANDARD_DOMAINS, WHISPER_PROFILE_KEYS, ProfileError,
                                         ProfileLimits, ShapeRange, ort_profile_options, shape_arg)

from relais_export.errors import ExportError

__all__ = ["PROFILED_MODEL_TYPES", "STANDARD_DOMAINS", "WHISPER_PROFILE_KEYS", "ProfileLimits", "ShapeRange",
           "ort_profile_options", "profiles_from_metadata", "trtexec_command"]


def profiles_from_metadata(facts: ModelFacts | Mapping[str, Any],
                           limits: ProfileLimits | None = None) -> dict[str, ShapeRange]:
    """:func:`relais.runtime.trt_profiles.profiles_from_metadata`, a metadata problem as an ExportError."""
    try:
        return trt_profiles.profiles_from_metadata(facts, limits)
    except ProfileError as exc:
        raise ExportError(str(exc)) from None


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, profiles: Mapping[str, ShapeRange],
                    fp16: bool = True, timing_cache: str | Path | None = None) -> list[str]:
    """The equivalent ``trtexec`` command line (dynamic inputs only), as argv."""
    argv = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if any(not r.is_static for r in profiles.values()):
        argv += [f"--{w}Shapes={shape_arg(profiles, w)}" for w in ("min", "opt", "max")]
    if fp16:
        argv.append("--fp16")
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    return argv
