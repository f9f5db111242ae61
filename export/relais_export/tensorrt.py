"""TensorRT engines for our ONNX files, with optimisation profiles from their metadata.

An engine is only valid for the GPU model and TensorRT version that built it, so
engines live in a cache keyed by ``<gpu>-sm<cc>_trt<version>/<file>.<onnx sha256>``
(see docs/tensorrt.md). :func:`cache_key` is the one definition of that key; the
container entrypoint (k8s/images/trt_cache_key.py) uses it for ONNX Runtime's engine
cache too, adding the ONNX Runtime and driver versions. ``tensorrt`` is imported
lazily: everything except the build itself (profiles, planning, trtexec commands)
works without it.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from relais.models.metadata import PREFIX, ModelFacts
from relais_export.errors import ExportError

log = logging.getLogger(__name__)

# The relais.* metadata keys the Whisper exporter writes and the profiles use. This
# is the contract between export/whisper and TensorRT: keep it in this one place.
WHISPER_PROFILE_KEYS = ("n_mels", "max_frames", "n_text_ctx", "n_audio_ctx",
                        "decoder_layers", "decoder_heads", "d_model")
PROFILED_MODEL_TYPES = ("whisper_encoder", "whisper_decoder")
STANDARD_DOMAINS = ("", "ai.onnx")  # TensorRT's ONNX parser does not take com.microsoft ops


@dataclass(frozen=True)
class ShapeRange:
    """One input's optimisation profile: the smallest, typical and largest shape."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self):
        for name in ("min", "opt", "max"):
            object.__setattr__(self, name, tuple(int(d) for d in getattr(self, name)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"shape range {self}: min/opt/max must have the same rank")
        if any(not 0 <= a <= b <= c for a, b, c in zip(self.min, self.opt, self.max)):
            raise ValueError(f"shape range {self}: need 0 <= min <= opt <= max on every axis")

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class ProfileLimits:
    """The serving envelope engines are built for (shapes outside it fail at run time)."""

    max_batch: int = 4  # streams batched into one model call
    opt_batch: int = 1
    min_frames: int = 100  # 1 s of log-mel (10 ms hop)
    opt_frames: int | None = None  # None: max_frames (the runtime pads windows to 30 s)
    opt_past_tokens: int = 64  # typical self-attention cache length while decoding

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch ({self.opt_batch}) <= max_batch ({self.max_batch})")
        if self.min_frames < 2 or self.min_frames % 2:
            raise ValueError(f"min_frames must be even and >= 2 (the encoder halves it), got {self.min_frames}")
        if self.opt_frames is not None and (self.opt_frames < self.min_frames or self.opt_frames % 2):
            raise ValueError(f"opt_frames must be even and >= min_frames, got {self.opt_frames}")
        if self.opt_past_tokens < 0:
            raise ValueError(f"opt_past_tokens must be >= 0, got {self.opt_past_tokens}")


def _facts_dict(facts: ModelFacts | Mapping[str, Any]) -> Mapping[str, Any]:
    return facts.facts if isinstance(facts, ModelFacts) else facts


def _int_fact(facts: Mapping[str, Any], key: str) -> int:
    if key not in facts:
        raise ExportError(f"model metadata lacks '{PREFIX}{key}', needed for TensorRT profiles; "
                          f"re-export the model with this version of relais")
    try:
        return int(facts[key])
    except (TypeError, ValueError):
        raise ExportError(f"model metadata {PREFIX}{key}={facts[key]!r} is not an integer") from None


def profiles_from_metadata(facts: ModelFacts | Mapping[str, Any],
                           limits: ProfileLimits | None = None) -> dict[str, ShapeRange]:
    """Optimisation profiles for an exported Whisper encoder or decoder, from its
    relais.* metadata (a ``ModelFacts`` or a plain dict of facts)."""
    facts = _facts_dict(facts)
    limits = limits or ProfileLimits()
    model_type = facts.get("model_type")
    if model_type not in PROFILED_MODEL_TYPES:
        raise ExportError(f"no TensorRT profile for model type {model_type!r} "
                          f"(known: {', '.join(PROFILED_MODEL_TYPES)})")
    n = {key: _int_fact(facts, key) for key in WHISPER_PROFILE_KEYS}
    if n["decoder_heads"] <= 0 or n["d_model"] % n["decoder_heads"]:
        raise ExportError(f"metadata d_model={n['d_model']} is not divisible by decoder_heads={n['decoder_heads']}")
    if limits.min_frames > n["max_frames"]:
        raise ExportError(f"ProfileLimits.min_frames={limits.min_frames} exceeds the model's max_frames={n['max_frames']}")
    b_min, b_opt, b_max = 1, limits.opt_batch, limits.max_batch
    opt_frames = min(limits.opt_frames or n["max_frames"], n["max_frames"])
    if model_type == "whisper_encoder":
        return {"mel": ShapeRange((b_min, n["n_mels"], limits.min_frames),
                                  (b_opt, n["n_mels"], opt_frames),
                                  (b_max, n["n_mels"], n["max_frames"]))}

    layers, heads = n["decoder_layers"], n["decoder_heads"]
    head_dim = n["d_model"] // heads
    max_past = n["n_text_ctx"] - 1  # the cache never holds the last position's input
    # The encoder halves the frame count (stride-2 conv): cross K/V has frames // 2 steps.
    cross_min, cross_opt, cross_max = limits.min_frames // 2, opt_frames // 2, n["n_audio_ctx"]

    def kv(batch: int, steps: int) -> tuple[int, ...]:
        return (layers, batch, heads, steps, head_dim)

    self_kv = ShapeRange(kv(b_min, 0), kv(b_opt, min(limits.opt_past_tokens, max_past)), kv(b_max, max_past))
    cross_kv = ShapeRange(kv(b_min, cross_min), kv(b_opt, cross_opt), kv(b_max, cross_max))
    return {
        "tokens": ShapeRange((b_min, 1), (b_opt, 1), (b_max, n["n_text_ctx"])),
        "offset": ShapeRange((1,), (1,), (1,)),
        "self_k": self_kv, "self_v": self_kv,
        "cross_k": cross_kv, "cross_v": cross_kv,
    }


def _shape_arg(profiles: Mapping[str, ShapeRange], which: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(r, which))}"
                    for name, r in profiles.items() if not r.is_static)


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, profiles: Mapping[str, ShapeRange],
                    fp16: bool = True, timing_cache: str | Path | None = None) -> list[str]:
    """The equivalent ``trtexec`` command line (dynamic inputs only), as argv."""
    argv = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if any(not r.is_static for r in profiles.values()):
        argv += [f"--{w}Shapes={_shape_arg(profiles, w)}" for w in ("min", "opt", "max")]
    if fp16:
        argv.append("--fp16")
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    return argv


# -- device, cache key and TensorRT ------------------------------------------------

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
    from relais_export.errors import require
    from relais.models.metadata import facts_from_map

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


def ort_profile_options(profiles: Mapping[str, ShapeRange]) -> dict[str, str]:
    """The same profiles as ONNX Runtime TensorRT EP provider options (explicit profiles
    stop the EP from rebuilding its engine whenever a larger shape arrives)."""
    return {f"trt_profile_{w}_shapes": _shape_arg(profiles, w) for w in ("min", "opt", "max")}
