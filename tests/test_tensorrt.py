"""TensorRT engine building: profiles and planning run everywhere; builds need a GPU.

The GPU tests use tiny generated ONNX models (a 2-op MLP, and a stand-in "Whisper
encoder" with the real input name and metadata) so they take seconds, not minutes.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from relais_export.errors import ExportError
from relais_export.tensorrt import (
    WHISPER_PROFILE_KEYS, CudaDevice, ProfileLimits, ShapeRange, plan_engines, profiles_from_metadata,
    trtexec_command,
)

# Whisper base as the exporter describes it.
BASE = {"n_mels": 80, "max_frames": 3000, "n_text_ctx": 448, "n_audio_ctx": 1500,
        "decoder_layers": 6, "decoder_heads": 8, "d_model": 512}


def _gpu_available() -> bool:
    try:
        import tensorrt  # noqa: F401

        from relais_export.tensorrt import cuda_device

        cuda_device(0)
        return True
    except (ImportError, ExportError):
        return False


NO_GPU = "needs the tensorrt package and an NVIDIA GPU"


# -- tiny generated models -----------------------------------------------------------

def _tiny_mlp(path: Path) -> Path:
    """x [batch, 8] -> Relu(x @ W + b) [batch, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])],
        "tiny_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
         numpy_helper.from_array(np.zeros(4, np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _tiny_encoder(path: Path, model_type: str = "whisper_encoder", domain: str = "") -> Path:
    """A stand-in with the encoder's input name and relais.* metadata: mel -> Relu(mel)."""
    import onnx
    from onnx import TensorProto, helper

    from relais_export.metadata import set_metadata

    node = helper.make_node("Relu", ["mel"], ["cross_k"], domain=domain)
    graph = helper.make_graph(
        [node], "tiny_encoder",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", 4, "frames"])],
        [helper.make_tensor_value_info("cross_k", TensorProto.FLOAT, ["batch", 4, "frames"])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    set_metadata(model, {"model_type": model_type, "n_mels": 4, "max_frames": 20, "n_text_ctx": 8,
                         "n_audio_ctx": 10, "decoder_layers": 1, "decoder_heads": 1, "d_model": 2})
    onnx.save(model, str(path))
    return path


TINY_LIMITS = ProfileLimits(max_batch=2, min_frames=2, opt_frames=10)


# -- profiles (pure) -----------------------------------------------------------------

def test_encoder_profile_from_metadata():
    p = profiles_from_metadata({"model_type": "whisper_encoder", **BASE})
    assert p == {"mel": ShapeRange((1, 80, 100), (1, 80, 3000), (4, 80, 3000))}


def test_decoder_profile_from_metadata():
    p = profiles_from_metadata({"model_type": "whisper_decoder", **BASE}, ProfileLimits(max_batch=8, opt_batch=2))
    assert p["tokens"] == ShapeRange((1, 1), (2, 1), (8, 448))
    assert p["offset"] == ShapeRange((1,), (1,), (1,)) and p["offset"].is_static
    assert p["self_k"] == p["self_v"] == ShapeRange((6, 1, 8, 0, 64), (6, 2, 8, 64, 64), (6, 8, 8, 447, 64))
    assert p["cross_k"] == p["cross_v"] == ShapeRange((6, 1, 8, 50, 64), (6, 2, 8, 1500, 64), (6, 8, 8, 1500, 64))
    assert "cross_len" not in p  # an export from before per-row inputs
    rows = profiles_from_metadata({"model_type": "whisper_decoder", **BASE, "rows_input": "cross_len"},
                                  ProfileLimits(max_batch=8, opt_batch=2))
    assert rows["offset"] == rows["cross_len"] == ShapeRange((1,), (2,), (8,))  # one per stream in the call


def test_profiles_accept_model_facts_objects():
    from relais.models.metadata import ModelFacts

    facts = ModelFacts(path="decoder.fp32.onnx", facts={"model_type": "whisper_decoder", **BASE})
    assert profiles_from_metadata(facts)["cross_k"].max == (6, 4, 8, 1500, 64)


def test_profile_errors_are_clear():
    with pytest.raises(ExportError, match="relais.n_text_ctx"):
        profiles_from_metadata({"model_type": "whisper_decoder", **{k: v for k, v in BASE.items() if k != "n_text_ctx"}})
    with pytest.raises(ExportError, match="no TensorRT profile for model type 'piper_vits'"):
        profiles_from_metadata({"model_type": "piper_vits"})
    with pytest.raises(ExportError, match="not divisible"):
        profiles_from_metadata({"model_type": "whisper_decoder", **BASE, "decoder_heads": 7})
    with pytest.raises(ExportError, match="exceeds"):
        profiles_from_metadata({"model_type": "whisper_encoder", **BASE, "max_frames": 50})
    with pytest.raises(ValueError):
        ShapeRange((1, 2), (1, 1), (1, 4))  # opt < min
    with pytest.raises(ValueError):
        ShapeRange((1,), (1, 2), (1, 2))  # ranks differ
    with pytest.raises(ValueError):
        ProfileLimits(max_batch=2, opt_batch=3)
    with pytest.raises(ValueError):
        ProfileLimits(min_frames=101)


def test_profile_keys_are_what_the_whisper_exporter_writes():
    """The metadata contract: every key the profiles read is written by whisper_facts()."""
    source = (Path(__file__).parents[1] / "export" / "relais_export" / "whisper" / "export.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == "whisper_facts")
    returned = next(n.value for n in ast.walk(fn) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict))
    written = {k.value for k in returned.keys if isinstance(k, ast.Constant)}
    assert set(WHISPER_PROFILE_KEYS) <= written, set(WHISPER_PROFILE_KEYS) - written


def test_trtexec_command():
    p = profiles_from_metadata({"model_type": "whisper_decoder", **BASE})
    argv = trtexec_command("decoder.fp16.onnx", "decoder.engine", p, fp16=True, timing_cache="timing.cache")
    assert argv[:3] == ["trtexec", "--onnx=decoder.fp16.onnx", "--saveEngine=decoder.engine"]
    min_shapes = next(a for a in argv if a.startswith("--minShapes="))
    assert "tokens:1x1" in min_shapes and "self_k:6x1x8x0x64" in min_shapes and "offset" not in min_shapes
    assert "--fp16" in argv and "--timingCacheFile=timing.cache" in argv


def test_plan_engines_keys_and_skips(tmp_path):
    """Planning needs no GPU: which files get engines, and the device-specific cache key."""
    from relais.models.manifest import sha256_file

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    enc = _tiny_encoder(model_dir / "encoder.fp32.onnx")
    _tiny_encoder(model_dir / "encoder.int8.onnx", domain="com.microsoft")  # ORT-only operators
    _tiny_mlp(model_dir / "other.onnx")  # no relais metadata
    device = CudaDevice("NVIDIA H100 80GB HBM3", "9.0")
    plans = plan_engines(model_dir, tmp_path / "cache", device, "10.9.0", limits=TINY_LIMITS)
    assert [p.onnx_path.name for p in plans] == ["encoder.fp32.onnx"]
    plan = plans[0]
    assert plan.onnx_sha256 == sha256_file(enc)
    assert plan.engine_path.parent == tmp_path / "cache" / "nvidia-h100-80gb-hbm3-sm90_trt10.9.0"
    assert plan.engine_path.name.startswith(f"encoder.fp32.{plan.onnx_sha256[:16]}.")
    assert plan.timing_cache.parent == plan.engine_path.parent
    assert plan.profiles == {"mel": ShapeRange((1, 4, 2), (1, 4, 10), (2, 4, 20))}
    fp32 = plan_engines(model_dir, tmp_path / "cache", device, "10.9.0", fp16=False, limits=TINY_LIMITS)[0]
    assert fp32.engine_path != plan.engine_path  # precision is part of the key
    other_gpu = plan_engines(model_dir, tmp_path / "cache", CudaDevice("NVIDIA L4", "8.9"), "10.9.0",
                             limits=TINY_LIMITS)[0]
    assert other_gpu.engine_path.parent.name == "nvidia-l4-sm89_trt10.9.0"


# -- the profiles the runtime gives ONNX Runtime's TensorRT provider ------------------------

def _parse_profile(options: dict[str, str], which: str) -> dict[str, tuple[int, ...]]:
    """``trt_profile_<which>_shapes`` ("name:AxB,...") back into shapes (parsed here, not by the code)."""
    shapes = {}
    for item in options[f"trt_profile_{which}_shapes"].split(","):
        name, dims = item.split(":")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def test_the_runtime_profiles_cover_every_shape_a_stream_feeds_whisper(model_set):
    """The real Whisper base export, run on the CPU as a stream runs it (encoder windows from a short
    tail to 28 s, greedy decodes of several streams in one call, the final beam search): every
    input shape falls inside the TensorRT profiles the runtime would hand the provider."""
    from relais.pipeline.engine import EngineConfig, whisper_runtime
    from relais.runtime.ort import RuntimeConfig, _provider_options, tensorrt_profiles
    from relais.runtime.whisper import GreedyRequest, WhisperModel

    model_dir = model_set.path(model_set.get("whisper-base").name)
    runtime = whisper_runtime(EngineConfig(runtime=RuntimeConfig(providers=("cpu",))))
    assert runtime.trt_max_batch == 4  # load.max_batch 4, beam 3
    whisper = WhisperModel(model_dir, "fp32", runtime)
    fed: dict[str, list[dict[str, tuple[int, ...]]]] = {"encoder": [], "decoder": []}
    for part in fed:
        session = getattr(whisper, part)
        run = session.run

        def spy(outputs, feed, run=run, part=part):  # records the shapes, then runs the real model
            fed[part].append({name: np.shape(value) for name, value in feed.items()})
            return run(outputs, feed)
        session.run = spy

    rng = np.random.default_rng(0)
    prompt = whisper.prompt("translate", "fr")
    windows = [whisper.encode(rng.standard_normal(n).astype(np.float32) * 0.1, pad)
               for n, pad in ((512, None), (16000, 2.0), (48000, 4.0), (16000 * 28, None))]
    whisper.greedy_batch([GreedyRequest(enc, prompt, max_new_tokens=6) for enc in windows])
    whisper.beam_search(windows[1], prompt, beam_size=3, max_new_tokens=4)

    assert max(shapes["self_k"][1] for shapes in fed["decoder"]) == 4  # four streams' rows in one call
    assert max(shapes["mel"][2] for shapes in fed["encoder"]) == 2800 and min(s["mel"][2] for s in fed["encoder"]) == 4
    for part in fed:
        path = model_dir / f"{part}.fp32.onnx"
        options = tensorrt_profiles(path, runtime)
        low, high = _parse_profile(options, "min"), _parse_profile(options, "max")
        opt = _parse_profile(options, "opt")
        assert all(low[k] <= opt[k] <= high[k] for k in low)
        for shapes in fed[part]:
            for name, shape in shapes.items():
                if name not in low:  # a fixed-size input (no profile needed)
                    continue
                assert len(shape) == len(low[name]), (name, shape)
                assert all(a <= d <= b for a, d, b in zip(low[name], shape, high[name])), (part, name, shape)
        # The provider options carry the profiles next to the engine cache settings.
        full = _provider_options("tensorrt", dataclasses.replace(runtime, trt_cache_dir=""), str(path))
        assert {k: full[k] for k in options} == options and full["trt_fp16_enable"] is True


def test_runtime_profiles_only_for_whisper_graphs_tensorrt_parses(model_set):
    from relais.pipeline.engine import EngineConfig, whisper_runtime
    from relais.runtime.ort import RuntimeConfig, tensorrt_profiles

    whisper_dir = model_set.path(model_set.get("whisper-base").name)
    cfg = RuntimeConfig(providers=("cpu",))
    assert tensorrt_profiles(whisper_dir / "decoder.int8.onnx", cfg) == {}  # MatMulNBits: partitioned graph
    for entry in (model_set.by_task("vad")[0], model_set.by_task("tts")[0]):
        onnx_file = next(model_set.path(entry.name).glob("*.onnx"))
        assert tensorrt_profiles(onnx_file, cfg) == {}
    encoder = tensorrt_profiles(whisper_dir / "encoder.fp32.onnx", cfg)
    assert _parse_profile(encoder, "max") == {"mel": (4, 80, 3000)}
    # More streams per decode, or a wider beam, widen the envelope.
    assert whisper_runtime(EngineConfig(runtime=cfg, max_batch=8)).trt_max_batch == 8
    assert whisper_runtime(EngineConfig(runtime=cfg, latency_overrides={"beam_size": 6})).trt_max_batch == 6
    wide = tensorrt_profiles(whisper_dir / "decoder.fp32.onnx", RuntimeConfig(providers=("cpu",), trt_max_batch=8))
    assert _parse_profile(wide, "max")["self_k"] == (6, 8, 8, 447, 64)
    with pytest.raises(ValueError, match="trt_max_batch"):
        RuntimeConfig(trt_max_batch=0)


def test_missing_tensorrt_is_a_clear_error(monkeypatch, tmp_path):
    from relais_export.tensorrt import build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(ExportError, match="pip install"):
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", {})


# -- GPU --------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason=NO_GPU)
def test_build_engine_on_tiny_generated_model(tmp_path):
    import tensorrt as trt

    from relais_export.tensorrt import build_engine

    onnx_path = _tiny_mlp(tmp_path / "tiny_mlp.onnx")
    cache = tmp_path / "timing.cache"
    engine_path = build_engine(onnx_path, tmp_path / "tiny_mlp.engine",
                               {"x": ((1, 8), (2, 8), (4, 8))}, fp16=True, timing_cache=cache)
    assert engine_path.stat().st_size > 0 and cache.stat().st_size > 0
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    assert engine is not None
    assert [tuple(s) for s in engine.get_tensor_profile_shape("x", 0)] == [(1, 8), (2, 8), (4, 8)]
    with pytest.raises(ExportError, match="no optimisation profile"):
        build_engine(onnx_path, tmp_path / "bad.engine", {})
    with pytest.raises(ExportError, match="does not have"):
        build_engine(onnx_path, tmp_path / "bad.engine", {"x": ((1, 8),) * 3, "y2": ((1,),) * 3})


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason=NO_GPU)
def test_build_engines_uses_the_cache(tmp_path):
    from relais_export.tensorrt import build_engines

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    _tiny_encoder(model_dir / "encoder.fp32.onnx")
    (engine,) = build_engines(model_dir, tmp_path / "cache", limits=TINY_LIMITS)
    record = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert record["profiles"]["mel"]["max"] == [2, 4, 20]
    mtime = engine.stat().st_mtime_ns
    (again,) = build_engines(model_dir, tmp_path / "cache", limits=TINY_LIMITS)
    assert again == engine and engine.stat().st_mtime_ns == mtime
