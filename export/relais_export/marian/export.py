"""Export a Hugging Face Marian / Opus-MT checkpoint to two ONNX files.

marian_encoder.onnx
    input_ids, attention_mask [batch, src] int64
    -> encoder_hidden_states [batch, src, d_model],
       cross_key.{i}, cross_value.{i} [batch, heads, src, head_dim] per decoder layer
       (the cross-attention K/V are computed once here, not at every decoder step)
marian_decoder.onnx
    input_ids [batch, new] int64, position_offset int64 scalar, encoder_attention_mask
    [batch, src] int64, past_key.{i}, past_value.{i} [batch, heads, past, head_dim],
    cross_key.{i}, cross_value.{i}
    -> logits [batch, vocab] (last new position, final_logits_bias added),
       present_key.{i}, present_value.{i} [batch, heads, past + new, head_dim]

The tokenizer files (source.spm, target.spm, vocab.json, ...) are copied alongside,
and every fact the runtime needs is written into the files' metadata.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from relais_export.errors import require
from relais_export.marian.checkpoint import MarianCheckpoint, load_marian_checkpoint
from relais_export.metadata import set_metadata

log = logging.getLogger(__name__)

ENCODER_FILE = "marian_encoder.onnx"
DECODER_FILE = "marian_decoder.onnx"
OPSET = 17


@dataclass
class MarianExport:
    encoder_path: Path
    decoder_path: Path
    tokenizer_files: list[Path] = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # shared by both files (model_type aside)


def _suppressed_ids(gen) -> list[int]:
    """Single-token bad_words_ids (Opus-MT bans <pad>) become a plain suppress list."""
    ids = []
    for seq in getattr(gen, "bad_words_ids", None) or []:
        if len(seq) == 1:
            ids.append(int(seq[0]))
        else:
            log.warning("multi-token bad_words_ids entry %s is not carried over to the runtime", seq)
    return sorted(set(ids))


def marian_facts(ckpt: MarianCheckpoint) -> dict:
    cfg = ckpt.model.config
    gen = ckpt.model.generation_config
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    forced_eos = getattr(gen, "forced_eos_token_id", None)
    if isinstance(forced_eos, list):
        forced_eos = forced_eos[0] if forced_eos else None
    return {
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "encoder_attention_heads": cfg.encoder_attention_heads,
        "decoder_attention_heads": cfg.decoder_attention_heads,
        "vocab_size": cfg.vocab_size,
        "decoder_vocab_size": int(ckpt.model.lm_head.weight.shape[0]),
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "eos_token_id": eos,
        "pad_token_id": cfg.pad_token_id,
        "forced_eos_token_id": forced_eos,
        "suppress_token_ids": _suppressed_ids(gen),
        # Generation length cap, decoder start token included (HF's max_length meaning).
        "max_length": min(ckpt.max_length or cfg.max_position_embeddings, cfg.max_position_embeddings),
        "max_position_embeddings": cfg.max_position_embeddings,
        "activation_function": cfg.activation_function,
        "scale_embedding": bool(cfg.scale_embedding),
        "separate_vocabs": ckpt.separate_vocabs,
        "source_language": ckpt.source_language,
        "target_language": ckpt.target_language,
        "source_sha256": ckpt.source_sha256,
        "provenance": ckpt.provenance,
    }


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    torch = require("torch")
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _stamp(path: Path, facts: dict) -> None:
    onnx = require("onnx")
    model = onnx.load(str(path))
    set_metadata(model, facts)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _export_encoder(ckpt: MarianCheckpoint, path: Path) -> None:
    torch = require("torch")
    from relais_export.marian.modules import MarianEncoderForExport

    n_dec = ckpt.model.config.decoder_layers
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 1]], dtype=torch.long) % ckpt.model.config.vocab_size
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    cross = [f"cross_{kv}.{i}" for i in range(n_dec) for kv in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "source_len"}, "attention_mask": {0: "batch", 1: "source_len"}}
    axes["encoder_hidden_states"] = {0: "batch", 1: "source_len"}
    axes.update({name: {0: "batch", 2: "source_len"} for name in cross})
    _export(
        MarianEncoderForExport(ckpt.model).eval(),
        (ids, mask),
        path,
        ["input_ids", "attention_mask"],
        ["encoder_hidden_states", *cross],
        axes,
    )


def _export_decoder(ckpt: MarianCheckpoint, path: Path) -> None:
    torch = require("torch")
    from relais_export.marian.modules import MarianDecoderForExport

    cfg = ckpt.model.config
    heads, head_dim = cfg.decoder_attention_heads, cfg.d_model // cfg.decoder_attention_heads
    batch, new_len, past_len, src_len = 2, 2, 3, 4  # new_len > 1 so no shape is traced as a constant 1
    cache_names, cache_args = [], []
    for i in range(cfg.decoder_layers):
        cache_names += [f"past_key.{i}", f"past_value.{i}", f"cross_key.{i}", f"cross_value.{i}"]
        cache_args += [torch.randn(batch, heads, past_len, head_dim) for _ in range(2)]
        cache_args += [torch.randn(batch, heads, src_len, head_dim) for _ in range(2)]
    present = [f"present_{kv}.{i}" for i in range(cfg.decoder_layers) for kv in ("key", "value")]
    axes = {
        "input_ids": {0: "batch", 1: "new_len"},
        "encoder_attention_mask": {0: "batch", 1: "source_len"},
        "logits": {0: "batch"},
    }
    for name in cache_names:
        axes[name] = {0: "batch", 2: "past_len" if name.startswith("past") else "source_len"}
    axes.update({name: {0: "batch", 2: "total_len"} for name in present})
    args = (
        torch.full((batch, new_len), cfg.decoder_start_token_id, dtype=torch.long),
        torch.tensor(past_len, dtype=torch.long),
        torch.ones(batch, src_len, dtype=torch.long),
        *cache_args,
    )
    _export(
        MarianDecoderForExport(ckpt.model).eval(),
        args,
        path,
        ["input_ids", "position_offset", "encoder_attention_mask", *cache_names],
        ["logits", *present],
        axes,
    )


def export_marian(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    source_language: str | None = None,
    target_language: str | None = None,
    provenance: str = "",
) -> MarianExport:
    """Export a MarianMTModel checkpoint directory to ``out_dir`` (ONNX files + tokenizer files)."""
    ckpt = load_marian_checkpoint(checkpoint_dir, source_language, target_language, provenance)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = marian_facts(ckpt)
    enc_path, dec_path = out / ENCODER_FILE, out / DECODER_FILE
    log.info("exporting Marian encoder (%d layers) to %s", facts["encoder_layers"], enc_path)
    _export_encoder(ckpt, enc_path)
    _stamp(enc_path, {"model_type": "marian_encoder", **facts})
    log.info("exporting Marian decoder (%d layers) to %s", facts["decoder_layers"], dec_path)
    _export_decoder(ckpt, dec_path)
    _stamp(dec_path, {"model_type": "marian_decoder", **facts})
    copied = []
    for src in ckpt.tokenizer_files:
        dst = out / src.name
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        copied.append(dst)
    return MarianExport(encoder_path=enc_path, decoder_path=dec_path, tokenizer_files=copied, facts=facts)
