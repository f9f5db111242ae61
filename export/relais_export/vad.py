"""Silero VAD: take the ONNX file shipped in the ``silero-vad`` wheel, check its
interface and stamp the facts the runtime needs (relais.runtime.vad).

The ``silero-vad`` package depends on torch and torchaudio; we need only its ONNX
file. So it is not installed: its wheel (a pinned release) is fetched with ``pip
download --no-deps`` into the Relais cache and the file is read from the zip
(relais_export.wheels). An installed ``silero-vad`` is used instead when present.

Protocol of the v5/v6 ONNX model at 16 kHz (from the package's ``OnnxWrapper``): each
call takes a 512-sample window *preceded by the last 64 samples of the previous
call's input* (zeros at the start of a stream), so ``input`` is [batch, 576]; ``state``
[2, batch, 128] is the recurrent state carried between calls (zeros at the start);
``sr`` is a scalar int64. Outputs: ``output`` [batch, 1] speech probability and
``stateN``, the next state.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais_export.errors import ExportError, require
from relais_export.metadata import set_metadata
from relais_export.packages import find_package_file, is_installed, package_version
from relais_export.wheels import download_wheel, extract_member

log = logging.getLogger(__name__)

DIST = "silero-vad"
SOURCE_GLOB = "silero_vad/data/silero_vad.onnx"
# The release whose wheel is fetched when silero-vad is not installed, and the sha256 of
# its silero_vad.onnx (checked after extraction).
PINNED_VERSION = "6.2.3"
PINNED_ONNX_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
OUT_NAME = "silero_vad.onnx"
SAMPLE_RATE_HZ = 16000
WINDOW_SAMPLES = 512  # 32 ms: the only window size the 16 kHz model accepts
CONTEXT_SAMPLES = 64  # tail of the previous input, prepended to every window
STATE_CHANNELS = 128

# name -> (onnx elem type name, rank, fixed dims by axis)
EXPECTED_INPUTS = {
    "input": ("FLOAT", 2, {}),
    "state": ("FLOAT", 3, {0: 2, 2: STATE_CHANNELS}),
    "sr": ("INT64", 0, {}),
}
EXPECTED_OUTPUTS = ("output", "stateN")


def _check_interface(model, path: Path) -> None:
    onnx = require("onnx")
    inputs = {i.name: i for i in model.graph.input}
    missing = [n for n in EXPECTED_INPUTS if n not in inputs]
    if missing:
        raise ExportError(f"{path} is not a Silero VAD v5/v6 model: inputs {sorted(inputs)} lack {missing}")
    for name, (dtype, rank, fixed) in EXPECTED_INPUTS.items():
        t = inputs[name].type.tensor_type
        got_type = onnx.TensorProto.DataType.Name(t.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if got_type != dtype or len(dims) != rank or any(dims[a] not in (None, v) for a, v in fixed.items()):
            raise ExportError(f"{path}: input {name!r} is {got_type}{dims}, expected {dtype} of rank {rank} "
                              f"with dims {fixed} (Silero VAD v5/v6)")
    outputs = [o.name for o in model.graph.output]
    if list(outputs) != list(EXPECTED_OUTPUTS):
        raise ExportError(f"{path}: outputs {outputs}, expected {list(EXPECTED_OUTPUTS)} (Silero VAD v5/v6)")


def _check_runs(path: Path) -> None:
    """One window of silence through ONNX Runtime: probability in [0, 1], state shape kept."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        "input": np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), np.float32),
        "state": np.zeros((2, 1, STATE_CHANNELS), np.float32),
        "sr": np.array(SAMPLE_RATE_HZ, np.int64),
    }
    prob, state = session.run(None, feed)
    if prob.shape != (1, 1) or not 0.0 <= float(prob[0, 0]) <= 1.0:
        raise ExportError(f"{path}: a test window gave output {prob.shape} {prob.ravel()[:4]}, expected one probability")
    if state.shape != (2, 1, STATE_CHANNELS):
        raise ExportError(f"{path}: a test window gave stateN {state.shape}, expected (2, 1, {STATE_CHANNELS})")


@dataclass(frozen=True)
class VadSource:
    """Where the Silero VAD ONNX file comes from."""

    path: Path
    version: str  # silero-vad release
    provenance: str


def wheel_cache_dir() -> Path:
    from relais.models.manifest import relais_cache_dir

    return relais_cache_dir() / "wheels"


def locate_vad_source(cache_dir: str | Path | None = None) -> VadSource:
    """The Silero VAD ONNX file: from an installed ``silero-vad`` (not imported: its
    ``__init__`` pulls torch), else from the pinned release's wheel in ``cache_dir``
    (default: the Relais cache's ``wheels/``), downloaded with ``pip download --no-deps``
    when absent."""
    if is_installed(DIST):
        version = package_version(DIST)
        return VadSource(find_package_file(DIST, SOURCE_GLOB), version, f"pypi:{DIST}=={version} ({SOURCE_GLOB})")
    cache = Path(cache_dir) if cache_dir else wheel_cache_dir()
    wheel = download_wheel(DIST, PINNED_VERSION, cache)
    onnx_path = extract_member(wheel, SOURCE_GLOB, cache / f"{DIST}-{PINNED_VERSION}" / OUT_NAME, PINNED_ONNX_SHA256)
    return VadSource(onnx_path, PINNED_VERSION, f"pypi:{DIST}=={PINNED_VERSION} ({SOURCE_GLOB}, wheel not installed)")


def export_vad(out_dir: str | Path, source: str | Path | VadSource | None = None) -> Path:
    """Validate Silero VAD and write ``out_dir/silero_vad.onnx`` with relais.* metadata.

    ``source`` defaults to :func:`locate_vad_source` (installed package, else the pinned
    wheel, fetched without its dependencies); a path is any Silero VAD v5/v6 ONNX file.
    """
    onnx = require("onnx")
    from relais.models.manifest import sha256_file

    if source is None:
        source = locate_vad_source()
    if isinstance(source, VadSource):
        provenance = source.provenance
        source = source.path
    else:
        source = Path(source)
        if not source.is_file():
            raise ExportError(f"Silero VAD model {source} not found")
        provenance = f"file:{source.name}"
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ExportError(f"{source} is not a readable ONNX file: {exc}") from exc
    _check_interface(model, source)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / OUT_NAME
    set_metadata(model, {
        "model_type": "silero_vad",
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "window_samples": WINDOW_SAMPLES,
        "context_samples": CONTEXT_SAMPLES,
        "state_shape": [2, "batch", STATE_CHANNELS],
        "source_sha256": sha256_file(source),
        "provenance": provenance,
        "licence": "MIT",
    })
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, str(tmp))
    _check_runs(tmp)
    shutil.move(str(tmp), str(out))
    log.debug("Silero VAD: %s -> %s", provenance, out)
    return out
