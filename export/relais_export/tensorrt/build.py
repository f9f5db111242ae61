"""Building TensorRT engines (``tensorrt`` imported lazily) and planning them into the cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from relais_export.errors import ExportError
from relais_export.tensorrt.device import CudaDevice, cache_key, cuda_device
from relais_export.tensorrt.profiles import (PROFILED_MODEL_TYPES, STANDARD_DOMAINS, ProfileLimits, ShapeRange,
                                             profiles_from_metadata)

log = logging.getLogger(__name__)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise ExportError("TensorRT's Python package is not installed; on a machine with an NVIDIA GPU "
                          "install it with: pip install 'relais[gpu]' (or pip install tensorrt)") from exc
    return tensorrt


def _apply_profile(builder, network, profiles: Mapping[str, ShapeRange], onnx_path: Path):
    profile = builder.create_optimization_profile()
    names = []
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape, name = tuple(inp.shape), inp.name
        names.append(name)
        if inp.is_shape_tensor:
            raise ExportError(f"{onnx_path}: input {name!r} is a shape tensor; build_engine does not handle those")
        rng = profiles.get(name)
        if -1 not in shape:
            if rng is not None and not (rng.is_static and rng.min == shape):
                raise ExportError(f"{onnx_path}: input {name!r} has the fixed shape {shape}, profile says {rng}")
            continue
        if rng is None:
            raise ExportError(f"{onnx_path}: dynamic input {name!r} {shape} has no optimisation profile")
        if len(rng.min) != len(shape) or any(d != -1 and d != m for d, m in zip(shape, rng.max)) \
                or any(d != -1 and d != m for d, m in zip(shape, rng.min)):
            raise ExportError(f"{onnx_path}: profile {rng} does not fit input {name!r} of shape {shape}")
        profile.set_shape(name, rng.min, rng.opt, rng.max)
    unknown = sorted(set(profiles) - set(names))
    if unknown:
        raise ExportError(f"{onnx_path}: profiles name inputs {unknown} the model does not have (inputs: {names})")
    return profile


def build_engine(onnx_path: str | Path, engine_path: str | Path, profiles: Mapping[str, Any],
                 fp16: bool = True, timing_cache: str | Path | None = None, workspace_gib: float = 4.0) -> Path:
    """Build and write a serialised TensorRT engine for ``onnx_path``.

    ``profiles`` maps input names to ``ShapeRange`` (or (min, opt, max) shape tuples);
    fixed-shape inputs may be omitted. ``timing_cache`` (a file) is read if present and
    updated after the build: it makes rebuilds on the same GPU much faster.
    """
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file {onnx_path} not found")
    profiles = {k: v if isinstance(v, ShapeRange) else ShapeRange(*v) for k, v in profiles.items()}
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # raised when no CUDA device can be used
        raise ExportError(f"TensorRT could not create a builder ({exc}): is a CUDA GPU visible?") from exc
    if builder is None:
        raise ExportError("TensorRT could not create a builder: is a CUDA GPU visible to this process?")
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast fp16; building %s with fp16 anyway", onnx_path.name)
        config.set_flag(trt.BuilderFlag.FP16)
    if config.add_optimization_profile(_apply_profile(builder, network, profiles, onnx_path)) < 0:
        raise ExportError(f"{onnx_path}: TensorRT rejected the optimisation profile {profiles}")
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        # ignore_mismatch=False: a cache from another GPU / TensorRT version is refused
        if not config.set_timing_cache(config.create_timing_cache(data), False):
            log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), False)

    start = time.monotonic()
    log.info("building TensorRT engine for %s (fp16=%s)", onnx_path.name, fp16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT log above)")
    _write_atomic(engine_path, bytes(serialized))
    if cache_path is not None:
        _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    log.info("wrote %s (%.1f MB, %.0f s)", engine_path, engine_path.stat().st_size / 1e6, time.monotonic() - start)
    return engine_path


def _parser_error(error) -> str:
    desc = error.desc() if hasattr(error, "desc") else str(error)
    node = getattr(error, "node", lambda: -1)()
    return f"{desc} (node {node})" if node >= 0 else desc


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- engine cache for a model directory ------------------------------------------

@dataclass(frozen=True)
class EnginePlan:
    onnx_path: Path
    engine_path: Path
    timing_cache: Path
    onnx_sha256: str
    profiles: dict[str, ShapeRange]
    fp16: bool


def _read_onnx_facts(path: Path) -> tuple[dict[str, Any], set[str]]:
    """relais.* facts and the operator domains of an ONNX file (weights not loaded)."""
    from relais.models.metadata import facts_from_map

    from relais_export.errors import require

    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    domains = {node.domain for node in model.graph.node}
    return facts_from_map(str(path), props).facts, domains


def plan_engines(model_dir: str | Path, cache_dir: str | Path, device: CudaDevice, trt_version: str,
                 fp16: bool = True, limits: ProfileLimits | None = None) -> list[EnginePlan]:
    """Which engines ``model_dir`` needs and where they live in ``cache_dir`` (pure: no GPU)."""
    from relais.models.manifest import sha256_file

    model_dir, cache_dir = Path(model_dir), Path(cache_dir)
    key_dir = cache_dir / cache_key(device.name, device.compute_capability, trt_version)
    plans = []
    for path in sorted(model_dir.rglob("*.onnx")):
        if cache_dir in path.parents:
            continue
        facts, domains = _read_onnx_facts(path)
        if facts.get("model_type") not in PROFILED_MODEL_TYPES:
            log.info("skipping %s: no TensorRT profile for model type %r", path.name, facts.get("model_type"))
            continue
        foreign = sorted(d for d in domains if d not in STANDARD_DOMAINS)
        if foreign:
            # e.g. the int8 files use com.microsoft MatMulNBits, which only ONNX Runtime runs
            log.info("skipping %s: uses %s operators TensorRT cannot parse", path.name, ", ".join(foreign))
            continue
        profiles = profiles_from_metadata(facts, limits)
        sha = sha256_file(path)
        variant = hashlib.sha256(json.dumps(
            {"fp16": fp16, "profiles": {k: asdict(v) for k, v in profiles.items()}}, sort_keys=True,
        ).encode()).hexdigest()[:8]
        stem = path.name[: -len(".onnx")]
        plans.append(EnginePlan(
            onnx_path=path, engine_path=key_dir / f"{stem}.{sha[:16]}.{variant}.engine",
            timing_cache=key_dir / "timing.cache", onnx_sha256=sha, profiles=profiles, fp16=fp16,
        ))
    return plans


def build_engines(model_dir: str | Path, cache_dir: str | Path | None = None, fp16: bool = True,
                  limits: ProfileLimits | None = None, device_id: int = 0, force: bool = False,
                  workspace_gib: float = 4.0) -> list[Path]:
    """Build (or reuse from the cache) an engine for every ONNX file of ``model_dir``
    that has a profile; returns the engine paths. ``cache_dir`` defaults to
    ``model_dir/tensorrt``."""
    trt = import_tensorrt()
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"model directory {model_dir} not found")
    cache_dir = Path(cache_dir) if cache_dir else model_dir / "tensorrt"
    device = cuda_device(device_id)
    plans = plan_engines(model_dir, cache_dir, device, trt.__version__, fp16, limits)
    if not plans:
        raise ExportError(f"{model_dir} has no ONNX file TensorRT engines can be built for "
                          f"(model types {', '.join(PROFILED_MODEL_TYPES)}, standard operators only)")
    built = []
    for plan in plans:
        if plan.engine_path.is_file() and not force:
            log.info("%s: cached engine %s", plan.onnx_path.name, plan.engine_path)
        else:
            start = time.monotonic()
            build_engine(plan.onnx_path, plan.engine_path, plan.profiles, fp16=plan.fp16,
                         timing_cache=plan.timing_cache, workspace_gib=workspace_gib)
            record = {
                "onnx": str(plan.onnx_path), "onnx_sha256": plan.onnx_sha256, "gpu": device.name,
                "compute_capability": device.compute_capability, "tensorrt_version": trt.__version__,
                "fp16": plan.fp16, "build_s": round(time.monotonic() - start, 1),
                "profiles": {k: asdict(v) for k, v in plan.profiles.items()},
            }
            _write_atomic(plan.engine_path.with_name(plan.engine_path.name + ".json"),
                          json.dumps(record, indent=2).encode())
        built.append(plan.engine_path)
    return built

