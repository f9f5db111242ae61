"""TensorRT optimisation profiles from our ONNX metadata.

A TensorRT engine takes only input shapes inside its profile (min/opt/max per input).
The runtime hands these to ONNX Runtime's TensorRT provider (``ort_profile_options``),
so that the provider builds one engine for the whole serving envelope instead of
rebuilding it whenever a larger shape arrives; the export toolchain
(``relais_export.tensorrt``) builds standalone engines and trtexec commands from the
same profiles. Pure Python: nothing here needs TensorRT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from relais.models.metadata import PREFIX, ModelFacts


# The relais.* metadata keys the Whisper exporter writes and the profiles use. This
# is the contract between export/whisper and TensorRT: keep it in this one place.
WHISPER_PROFILE_KEYS = ("n_mels", "max_frames", "n_text_ctx", "n_audio_ctx",
                        "decoder_layers", "decoder_heads", "d_model")
PROFILED_MODEL_TYPES = ("whisper_encoder", "whisper_decoder")
STANDARD_DOMAINS = ("", "ai.onnx")  # TensorRT's ONNX parser does not take com.microsoft ops


class ProfileError(ValueError):
    """The metadata cannot give a profile (wrong model type, a key missing or malformed)."""


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
        raise ProfileError(f"model metadata lacks '{PREFIX}{key}', needed for TensorRT profiles; "
                          f"re-export the model with this version of relais")
    try:
        return int(facts[key])
    except (TypeError, ValueError):
        raise ProfileError(f"model metadata {PREFIX}{key}={facts[key]!r} is not an integer") from None


def profiles_from_metadata(facts: ModelFacts | Mapping[str, Any],
                           limits: ProfileLimits | None = None) -> dict[str, ShapeRange]:
    """Optimisation profiles for an exported Whisper encoder or decoder, from its
    relais.* metadata (a ``ModelFacts`` or a plain dict of facts)."""
    facts = _facts_dict(facts)
    limits = limits or ProfileLimits()
    model_type = facts.get("model_type")
    if model_type not in PROFILED_MODEL_TYPES:
        raise ProfileError(f"no TensorRT profile for model type {model_type!r} "
                          f"(known: {', '.join(PROFILED_MODEL_TYPES)})")
    n = {key: _int_fact(facts, key) for key in WHISPER_PROFILE_KEYS}
    if n["decoder_heads"] <= 0 or n["d_model"] % n["decoder_heads"]:
        raise ProfileError(f"metadata d_model={n['d_model']} is not divisible by decoder_heads={n['decoder_heads']}")
    if limits.min_frames > n["max_frames"]:
        raise ProfileError(f"ProfileLimits.min_frames={limits.min_frames} exceeds the model's max_frames={n['max_frames']}")
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
    shapes = {
        "tokens": ShapeRange((b_min, 1), (b_opt, 1), (b_max, n["n_text_ctx"])),
        "offset": ShapeRange((1,), (1,), (1,)),
        "self_k": self_kv, "self_v": self_kv,
        "cross_k": cross_kv, "cross_v": cross_kv,
    }
    if facts.get("rows_input"):  # rows of several streams in one call: per-row offset and audio length
        rows = ShapeRange((1,), (b_opt,), (b_max,))
        shapes.update(offset=rows, cross_len=rows)
    return shapes


def shape_arg(profiles: Mapping[str, ShapeRange], which: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(r, which))}"
                    for name, r in profiles.items() if not r.is_static)


def ort_profile_options(profiles: Mapping[str, ShapeRange]) -> dict[str, str]:
    """The same profiles as ONNX Runtime TensorRT EP provider options (explicit profiles
    stop the EP from rebuilding its engine whenever a larger shape arrives)."""
    return {f"trt_profile_{w}_shapes": shape_arg(profiles, w) for w in ("min", "opt", "max")}
