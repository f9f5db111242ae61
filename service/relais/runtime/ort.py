"""ONNX Runtime session creation with the TensorRT -> CUDA -> CPU provider chain."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

# Numeric precisions a Whisper export can hold (encoder.<p>.onnx, decoder.<p>.onnx), and
# what a server may ask for: "auto" picks fp16 on a GPU, int8 on CPU, else fp32.
# The one definition: server config, engine, CLI and export all check against these.
PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_CHOICES = ("auto", *PRECISIONS)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class RuntimeConfig:
    """How models are executed. ``providers`` is tried in order; missing ones are skipped."""

    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per core)
    trt_cache_dir: str = ""  # TensorRT engine + timing cache (device-specific)
    trt_fp16: bool = True
    # Rows of one Whisper call the TensorRT engines are built for (optimisation profiles, docs/tensorrt.md):
    # at least the streams batched into one decode (load.max_batch) and the final beam search's width.
    trt_max_batch: int = 4
    device_id: int = 0
    # ONNX Runtime's CPU arena keeps every block it ever grew to; with a stream's ever-changing shapes
    # (audio length, decoder prefix) it held 100-190 MB more and grew up to 6-8 MB per minute of speech
    # (docs/benchmarks.md, "Memory growth of one long stream"); off, throughput was within noise.
    cpu_mem_arena: bool = False
    # How cuDNN picks a convolution algorithm for each new input shape (CUDA provider). ONNX Runtime's
    # default, exhaustive, times every algorithm at each new shape; a stream's shapes never repeat (each
    # phrase the voice speaks, each audio window), so on an H200 the voice took 1.27 s per phrase and
    # the pipeline ran slower than real time (docs/benchmarks.md, "On a GPU"). heuristic: cuDNN's pick.
    cudnn_conv_algo_search: str = "heuristic"

    def __post_init__(self):
        check_runtime(self.providers, self.intra_op_threads, self.cudnn_conv_algo_search)
        if not 1 <= self.trt_max_batch <= 64:
            raise ValueError(f"trt_max_batch must be within 1..64, got {self.trt_max_batch}")


CONV_ALGO_SEARCH = {"heuristic": "HEURISTIC", "exhaustive": "EXHAUSTIVE", "default": "DEFAULT"}


def check_runtime(providers: tuple[str, ...], intra_op_threads: int, cudnn_conv_algo_search: str = "heuristic",
                  key: str = "runtime.providers") -> None:
    """The runtime settings' rules (a ValueError naming the key), shared with the server config."""
    if not providers:
        raise ValueError(f"{key}: must name at least one provider (e.g. [cpu]), got {list(providers)}")
    unknown = [p for p in providers if p not in PROVIDER_ALIASES]
    if unknown:
        raise ValueError(f"{key}: unknown provider(s) {unknown}; choose from "
                         f"{sorted(PROVIDER_ALIASES)}, got {list(providers)}")
    if intra_op_threads < 0:
        raise ValueError(f"runtime.intra_op_threads: must be >= 0 (0 = ONNX Runtime default), got {intra_op_threads}")
    if cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
        raise ValueError(f"runtime.cudnn_conv_algo_search: must be one of {list(CONV_ALGO_SEARCH)}, "
                         f"got {cudnn_conv_algo_search!r}")


def check_precision(value: str, *, allow_auto: bool = True, key: str = "models.precision") -> str:
    """``value`` if it names a precision (``auto`` too when allowed), else a ValueError naming ``key``."""
    choices = PRECISION_CHOICES if allow_auto else PRECISIONS
    if value not in choices:
        raise ValueError(f"{key}: must be one of {list(choices)}, got {value!r}")
    return value


@dataclass
class LoadedSession:
    session: onnxruntime.InferenceSession
    provider: str  # the short name of the provider that runs it
    path: str
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)

    def run(self, outputs: list[str] | None, feed: dict) -> list:
        """``session.run``, bounded by the thread's current :class:`CallGuard` (if any)."""
        guard = getattr(_guards, "current", None)
        return self.session.run(outputs, feed, guard.options if guard is not None else None)


_guards = threading.local()


class CallGuard:
    """Bounds the ONNX Runtime calls a thread makes inside it: once ``timeout_s`` has passed, the
    run in progress is terminated (ONNX Runtime checks the flag between kernels and raises), and
    so is every later one, until the guard is left. ``expired`` says whether that happened.
    A hang outside ONNX Runtime (in Python) is not interrupted. One watchdog thread serves every
    guard (a timer thread per call cost about 1 ms on each of a stream's ~10 calls a second)."""

    def __init__(self, timeout_s: float):
        import onnxruntime as ort

        self.options = ort.RunOptions()
        self.expired = False
        self.timeout_s = timeout_s
        self._outer: CallGuard | None = None

    def expire(self) -> None:
        self.expired = True
        self.options.terminate = True

    def __enter__(self) -> CallGuard:
        self._outer = getattr(_guards, "current", None)
        _guards.current = self
        if self.timeout_s > 0:
            _WATCHDOG.watch(self, time.monotonic() + self.timeout_s)
        return self

    def __exit__(self, *exc) -> None:
        if self.timeout_s > 0:
            _WATCHDOG.forget(self)
        _guards.current = self._outer


class _Watchdog:
    """Expires the guards past their deadline, checking every ``tick_s`` (started on first use)."""

    def __init__(self, tick_s: float = 0.1):
        self.tick_s = tick_s
        self._deadlines: dict[int, tuple[float, CallGuard]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, guard: CallGuard, deadline: float) -> None:
        with self._lock:
            self._deadlines[id(guard)] = (deadline, guard)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relais-call-watchdog", daemon=True)
                self._thread.start()

    def forget(self, guard: CallGuard) -> None:
        with self._lock:
            self._deadlines.pop(id(guard), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            with self._lock:
                due = [key for key, (deadline, _) in self._deadlines.items() if deadline <= now]
                expired = [self._deadlines.pop(key)[1] for key in due]
            for guard in expired:
                guard.expire()


_WATCHDOG = _Watchdog()


# The TensorRT engines' envelope besides the batch: any audio length from 20 ms (an utterance's
# last window, unpadded) to the model's 30 s, tuned for the few seconds a stream's window holds.
TRT_MIN_FRAMES = 2
TRT_OPT_FRAMES = 800  # 8 s of log-mel


def tensorrt_profiles(path: str | Path, cfg: RuntimeConfig) -> dict[str, str]:
    """The TensorRT provider's optimisation profiles for the model at ``path`` (``trt_profile_*_shapes``),
    from its relais.* metadata; empty for a model without one (the VAD, the voice). Without them
    the provider builds an engine for the first shapes it sees and rebuilds it, for seconds or
    minutes, whenever a larger one arrives (a longer decoder cache, more rows, a longer window)."""
    from relais.models.metadata import read_metadata
    from relais.runtime.trt_profiles import (PROFILED_MODEL_TYPES, ProfileError, ProfileLimits, ort_profile_options,
                                             profiles_from_metadata)

    facts = read_metadata(path)
    if facts.get("model_type") not in PROFILED_MODEL_TYPES:
        return {}
    if facts.get("precision") == "int8":
        # com.microsoft MatMulNBits: TensorRT takes only parts of the graph, whose inputs are not the
        # model's, so profiles named after the model's inputs would not fit them
        return {}
    limits = ProfileLimits(max_batch=cfg.trt_max_batch, min_frames=TRT_MIN_FRAMES,
                           opt_frames=TRT_OPT_FRAMES)
    try:
        return ort_profile_options(profiles_from_metadata(facts, limits))
    except ProfileError as exc:
        log.warning("%s: no TensorRT profiles (%s); the provider will rebuild its engine as shapes grow",
                    os.path.basename(str(path)), exc)
        return {}


def _provider_options(name: str, cfg: RuntimeConfig, path: str = "") -> dict:
    if name == "tensorrt":
        opts = {"device_id": cfg.device_id, "trt_fp16_enable": cfg.trt_fp16}
        if cfg.trt_cache_dir:
            Path(cfg.trt_cache_dir).mkdir(parents=True, exist_ok=True)
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=cfg.trt_cache_dir,
                trt_timing_cache_enable=True,
                trt_timing_cache_path=cfg.trt_cache_dir,
            )
        if path:
            opts.update(tensorrt_profiles(path, cfg))
        return opts
    if name == "cuda":
        return {"device_id": cfg.device_id, "cudnn_conv_algo_search": CONV_ALGO_SEARCH[cfg.cudnn_conv_algo_search]}
    return {}


_preloaded = False


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN before the first GPU session, from pip's nvidia-* packages beside
    onnxruntime-gpu (``pip install 'onnxruntime-gpu[cuda,cudnn]'``) or else the loader's search
    path: without it, the CUDA provider fails to load unless torch was imported first, and ONNX
    Runtime falls back to the CPU with only a printed warning. Once per process."""
    global _preloaded
    if _preloaded or not hasattr(ort, "preload_dlls"):  # onnxruntime-gpu >= 1.21
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - the session's own provider check reports what is missing
        log.warning("could not preload the CUDA libraries: %s", exc)


def create_session(path: str | Path, cfg: RuntimeConfig | None = None) -> LoadedSession:
    """Open ``path`` with the first available provider of ``cfg.providers``."""
    import onnxruntime as ort

    cfg = cfg or RuntimeConfig()
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path} not found; run `relais models prepare`")
    available = set(ort.get_available_providers())
    chain = [p for p in cfg.providers if PROVIDER_ALIASES[p] in available]
    if not chain:
        raise RuntimeError(
            f"none of the configured providers {list(cfg.providers)} is available "
            f"(this onnxruntime has {sorted(available)})"
        )
    if chain[0] in ("tensorrt", "cuda"):
        _preload_cuda_libraries(ort)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cfg.intra_op_threads:
        opts.intra_op_num_threads = cfg.intra_op_threads
    opts.enable_cpu_mem_arena = cfg.cpu_mem_arena
    providers = [(PROVIDER_ALIASES[p], _provider_options(p, cfg, path)) for p in chain]
    session = ort.InferenceSession(path, opts, providers=providers)
    active = session.get_providers()[0]
    short = next(k for k, v in PROVIDER_ALIASES.items() if v == active)
    log.info("loaded %s on %s (asked for %s)", os.path.basename(path), short, ",".join(cfg.providers))
    if short != chain[0]:  # ONNX Runtime fell back (a GPU provider that failed to load): say so, once per file
        log.warning("%s runs on %s, not on %s, which this onnxruntime lists but could not start (see its "
                    "messages above)", os.path.basename(path), short, chain[0])
    return LoadedSession(
        session=session,
        provider=short,
        path=path,
        input_names=[i.name for i in session.get_inputs()],
        output_names=[o.name for o in session.get_outputs()],
    )
