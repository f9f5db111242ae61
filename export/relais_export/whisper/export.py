"""Export a WhisperCheckpoint to self-describing ONNX files.

Output directory layout (one model, several precisions):

    encoder.fp32.onnx  decoder.fp32.onnx     reference
    encoder.fp16.onnx  decoder.fp16.onnx     GPU (fp32 inputs/outputs)
    encoder.int8.onnx  decoder.int8.onnx     CPU, weight-only int8 MatMuls
    tokenizer.json  mel_filters.npy
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais.runtime.ort import PRECISIONS
from relais_export.errors import ExportError, require
from relais_export.metadata import set_metadata
from relais_export.whisper.checkpoint import WhisperCheckpoint

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH_S = 30
OPSET = 17
# Weight-only int8: per-block symmetric scales over MatMul weights. The vocabulary
# projection is a Gemm and stays fp32 (quantising it derails greedy decoding).
INT8_BLOCK_SIZE = 32


@dataclass
class WhisperExport:
    out_dir: Path
    files: dict[str, Path]  # e.g. {"encoder.fp32": Path, "tokenizer": Path}
    facts: dict


def alignment_heads(ckpt: WhisperCheckpoint) -> list[list[int]]:
    """The [layer, head] pairs whose averaged cross-attention the decoder outputs as
    ``alignment``: the checkpoint's own, else OpenAI Whisper's default (every head of
    the upper half of the decoder layers). Duplicates are dropped, order kept."""
    from relais_export.whisper.graphs import default_alignment_heads

    cfg = ckpt.model.config
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    chosen = ckpt.alignment_heads or default_alignment_heads(layers, heads)
    out: list[list[int]] = []
    for pair in chosen:
        if len(pair) != 2 or not (0 <= int(pair[0]) < layers and 0 <= int(pair[1]) < heads):
            raise ExportError(f"alignment head {list(pair)} is not a [layer, head] pair within "
                              f"{layers} decoder layers x {heads} heads")
        if [int(pair[0]), int(pair[1])] not in out:
            out.append([int(pair[0]), int(pair[1])])
    return out


def whisper_facts(ckpt: WhisperCheckpoint) -> dict:
    """The facts every exported Whisper file carries (model shape + special tokens)."""
    tokenizers = require("tokenizers")
    cfg = ckpt.model.config
    tok = tokenizers.Tokenizer.from_file(str(ckpt.tokenizer_json))

    def tid(name: str) -> int:
        value = tok.token_to_id(name)
        if value is None:
            raise ExportError(f"tokenizer {ckpt.tokenizer_json} lacks {name}")
        return value

    multilingual = cfg.vocab_size >= 51865
    lang_ids = {}
    if multilingual:
        # Language tokens sit between <|startoftranscript|> and <|translate|>.
        for i in range(tid("<|startoftranscript|>") + 1, tid("<|translate|>")):
            token = tok.id_to_token(i)
            if token and token.startswith("<|") and token.endswith("|>"):
                lang_ids[token[2:-2]] = i
    return {
        "n_mels": cfg.num_mel_bins,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.encoder_layers,
        "encoder_heads": cfg.encoder_attention_heads,
        "decoder_layers": cfg.decoder_layers,
        "decoder_heads": cfg.decoder_attention_heads,
        "vocab_size": cfg.vocab_size,
        "n_audio_ctx": cfg.max_source_positions,
        "n_text_ctx": cfg.max_target_positions,
        "max_frames": 2 * cfg.max_source_positions,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "chunk_length_s": CHUNK_LENGTH_S,
        "multilingual": multilingual,
        "sot": tid("<|startoftranscript|>"),
        "eot": tid("<|endoftext|>"),
        "sot_prev": tid("<|startofprev|>"),
        "no_timestamps": tid("<|notimestamps|>"),
        "timestamp_begin": tid("<|notimestamps|>") + 1,
        "transcribe": tid("<|transcribe|>"),
        "translate": tid("<|translate|>"),
        "no_speech": tok.token_to_id("<|nospeech|>") or tok.token_to_id("<|nocaptions|>") or -1,
        "lang_ids": lang_ids,
        "suppress_ids": ckpt.suppress_ids,
        "suppress_ids_begin": ckpt.suppress_ids_begin,
        "alignment_heads": alignment_heads(ckpt),
        # The decoder's fourth output; its absence marks an export older than AlignAtt.
        "alignment_output": "alignment",
        # The decoder's per-row input; its absence marks an export whose rows must share one offset
        # and one audio length (no cross-stream batching).
        "rows_input": "cross_len",
        "source_sha256": ckpt.source_sha256,
        "provenance": ckpt.provenance,
    }


def _export_fp32(ckpt: WhisperCheckpoint, out_dir: Path) -> tuple[Path, Path]:
    torch = require("torch")
    from relais_export.whisper.graphs import WhisperDecoderGraph, WhisperEncoderGraph

    cfg = ckpt.model.config
    enc_path, dec_path = out_dir / "encoder.fp32.onnx", out_dir / "decoder.fp32.onnx"
    encoder = WhisperEncoderGraph(ckpt.model).eval()
    decoder = WhisperDecoderGraph(ckpt.model, alignment_heads(ckpt)).eval()
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    mel = torch.zeros(1, cfg.num_mel_bins, 200)
    with torch.no_grad():
        torch.onnx.export(
            encoder, (mel,), str(enc_path), dynamo=False, opset_version=OPSET,
            input_names=["mel"], output_names=["cross_k", "cross_v"],
            dynamic_axes={"mel": {0: "batch", 2: "frames"},
                          "cross_k": {1: "batch", 3: "audio_ctx"}, "cross_v": {1: "batch", 3: "audio_ctx"}},
        )
        cross_k, cross_v = encoder(mel)
        tokens = torch.tensor([[1, 2]], dtype=torch.int64)
        past = torch.zeros(layers, 1, heads, 3, head_dim)
        torch.onnx.export(
            decoder, (tokens, torch.tensor([3]), past, past, cross_k, cross_v, torch.tensor([cross_k.shape[3]])),
            str(dec_path), dynamo=False, opset_version=OPSET,
            input_names=["tokens", "offset", "self_k", "self_v", "cross_k", "cross_v", "cross_len"],
            output_names=["logits", "new_self_k", "new_self_v", "alignment"],
            dynamic_axes={
                "tokens": {0: "batch", 1: "n"}, "offset": {0: "rows"}, "cross_len": {0: "rows"},
                "self_k": {1: "batch", 3: "past"}, "self_v": {1: "batch", 3: "past"},
                "cross_k": {1: "batch", 3: "audio_ctx"}, "cross_v": {1: "batch", 3: "audio_ctx"},
                "logits": {0: "batch"},
                "new_self_k": {1: "batch", 3: "total"}, "new_self_v": {1: "batch", 3: "total"},
                "alignment": {0: "batch", 1: "n", 2: "audio_ctx"},
            },
        )
    _share_vocab_projection(dec_path, "embed.weight")
    return enc_path, dec_path


def _share_vocab_projection(path: Path, embedding: str) -> None:
    """Make the output projection reuse the token embedding instead of a copy.

    The torch exporter folds ``embedding.T`` into a second initializer (a 51865 x d
    copy, ~100 MB for base); replace that MatMul by Gemm(transB=1) on the original.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    emb = numpy_helper.to_array(inits[embedding])
    for idx, node in enumerate(model.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        weight = inits[node.input[1]]
        if list(weight.dims) != list(reversed(emb.shape)):
            continue
        if not np.array_equal(numpy_helper.to_array(weight), emb.T):
            continue
        gemm = onnx.helper.make_node("Gemm", [node.input[0], embedding], list(node.output),
                                     name="vocab_projection", transB=1)
        model.graph.node.remove(node)
        model.graph.node.insert(idx, gemm)
        model.graph.initializer.remove(weight)
        onnx.save(model, str(path))
        return
    raise ExportError(f"{path}: could not find the vocabulary projection to share with {embedding}")


def _to_fp16(src: Path, dst: Path) -> None:
    onnx = require("onnx")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=True)
    onnx.save(model, str(dst))


def _quantisable_vocab_projection(model) -> None:
    """Give the vocabulary projection its own transposed copy of the embedding, as a MatMul.

    The weight-only quantiser rewrites MatMuls only, so the shared Gemm stayed fp32 in the int8
    decoder: 512 x 51865 for base, about 38% of the decoder's node time. Quantised, it costs
    a 30 MB int8 copy (with its scales) beside the fp32 embedding, which the token lookup keeps.
    No-op for a graph without the projection (the encoder).
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    node = next((n for n in model.graph.node if n.op_type == "Gemm" and n.name == "vocab_projection"), None)
    if node is None:
        return
    inits = {i.name: i for i in model.graph.initializer}
    weight = f"{node.input[1]}.transposed"
    model.graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[node.input[1]]).T), weight))
    idx = list(model.graph.node).index(node)
    model.graph.node.remove(node)
    model.graph.node.insert(idx, onnx.helper.make_node("MatMul", [node.input[0], weight], list(node.output),
                                                       name="vocab_projection"))


def _to_int8(src: Path, dst: Path) -> None:
    onnx = require("onnx")
    require("onnx_ir")  # needed by onnxruntime's weight-only quantiser
    from relais_export.quiet import import_quietly, quiet_logs

    # the module calls logging.basicConfig(INFO) on import and logs a line per node
    nbits = import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
    model = onnx.load(str(src))
    _quantisable_vocab_projection(model)
    quantizer = nbits.MatMulNBitsQuantizer(
        model, bits=8, block_size=INT8_BLOCK_SIZE, is_symmetric=True,
        accuracy_level=4, op_types_to_quantize=("MatMul",),
    )
    with quiet_logs():
        quantizer.process()
    onnx.save(quantizer.model.model, str(dst))


def _stamp(path: Path, facts: dict, model_type: str, precision: str) -> None:
    onnx = require("onnx")
    model = onnx.load(str(path))
    set_metadata(model, {"model_type": model_type, "precision": precision, **facts})
    onnx.save(model, str(path))


def _save_mel_filters(n_mels: int, out: Path) -> None:
    transformers = require("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    np.save(out, np.asarray(fe.mel_filters, dtype=np.float32))  # [n_fft/2+1, n_mels]


def export_whisper(ckpt: WhisperCheckpoint, out_dir: Path, precisions=("fp32", "int8")) -> WhisperExport:
    """Write the encoder/decoder graphs in each precision plus tokenizer and mel filters."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {unknown}; choose from {PRECISIONS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = whisper_facts(ckpt)
    log.info("exporting Whisper (%d/%d layers, d=%d) to %s", facts["encoder_layers"],
             facts["decoder_layers"], facts["d_model"], out_dir)
    enc32, dec32 = _export_fp32(ckpt, out_dir)
    files = {"encoder.fp32": enc32, "decoder.fp32": dec32}
    for precision, convert in (("fp16", _to_fp16), ("int8", _to_int8)):
        if precision in precisions:
            for part, src in (("encoder", enc32), ("decoder", dec32)):
                dst = out_dir / f"{part}.{precision}.onnx"
                log.info("converting %s -> %s", src.name, dst.name)
                convert(src, dst)
                files[f"{part}.{precision}"] = dst
    for key, path in files.items():
        part, precision = key.split(".")
        _stamp(path, facts, f"whisper_{part}", precision)
    if "fp32" not in precisions:
        for key in ("encoder.fp32", "decoder.fp32"):
            files.pop(key).unlink()
    shutil.copyfile(ckpt.tokenizer_json, out_dir / "tokenizer.json")
    _save_mel_filters(facts["n_mels"], out_dir / "mel_filters.npy")
    files["tokenizer"] = out_dir / "tokenizer.json"
    files["mel_filters"] = out_dir / "mel_filters.npy"
    return WhisperExport(out_dir=out_dir, files=files, facts=facts)
