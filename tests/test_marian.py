"""Marian export + its ONNX runner: tiny random Marian, plumbing/parity test.

A tiny randomly initialised MarianMTModel (d_model 32, 2 layers, 2 heads) with
sentencepiece models trained here on a generated corpus is exported once per
variant; the ONNX runtime must reproduce transformers' greedy ids, logits and
tokenisation exactly. Random weights make the translations meaningless: these
tests check wiring, not quality.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
spm = pytest.importorskip("sentencepiece")

from relais.models.metadata import read_metadata  # noqa: E402
from relais.runtime.ort import RuntimeConfig  # noqa: E402
from relais_export.errors import ExportError  # noqa: E402
from relais_export.marian import DECODER_FILE, ENCODER_FILE, export_marian  # noqa: E402
from relais_export.marian.runtime import MarianTranslator  # noqa: E402

SOURCE_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "pe", "du"]
TARGET_SYLLABLES = ["ba", "ge", "hi", "jo", "ku", "la", "mo", "ni", "po", "se"]
TEXTS = [
    "kalo mine ruta",
    "so",
    "vipe duka lomi neru taso vi",
    "kalo xyz mine",  # xyz: pieces missing from vocab.json -> <unk>
    ">>tgt<< mine ruta",  # a target-language code token, as in multilingual Opus-MT
]
# (activation, scale_embedding, tie_word_embeddings): Opus-MT uses swish + scaling + tied.
VARIANTS = {"swish-tied": ("swish", True, True), "gelu-untied": ("gelu", False, False)}


def _corpus(syllables: list[str], rng: random.Random, lines: int = 300) -> str:
    def word():
        return "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))

    return "\n".join(" ".join(word() for _ in range(rng.randint(3, 8))) for _ in range(lines))


def _train_spm(text: str, prefix: Path) -> Path:
    corpus = prefix.with_suffix(".txt")
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=40, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def _marian_vocab(spm_files: list[Path]) -> dict[str, int]:
    """Marian layout: </s>=0, <unk>=1, the pieces of both spm models, language codes, <pad> last."""
    vocab = {"</s>": 0, "<unk>": 1}
    for path in spm_files:
        proc = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(proc.get_piece_size()):
            if not (proc.is_control(i) or proc.is_unknown(i)):
                vocab.setdefault(proc.id_to_piece(i), len(vocab))
    vocab[">>tgt<<"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    return vocab


def _build_checkpoint(root: Path, activation: str, scale: bool, tied: bool):
    """Save a tiny random Marian + tokenizer (source.spm, target.spm, vocab.json) to root/ckpt."""
    rng = random.Random(0)
    languages = ((SOURCE_SYLLABLES, "src"), (TARGET_SYLLABLES, "tgt"))
    spms = [_train_spm(_corpus(syllables, rng), root / name) for syllables, name in languages]
    vocab = _marian_vocab(spms)
    (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    ckpt = root / "ckpt"
    tokenizer = transformers.MarianTokenizer(
        source_spm=str(spms[0]), target_spm=str(spms[1]), vocab=str(root / "vocab.json"),
        source_lang="src", target_lang="tgt",
    )
    tokenizer.save_pretrained(str(ckpt))

    pad = vocab["<pad>"]
    config = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=64, pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
        forced_eos_token_id=0, activation_function=activation, scale_embedding=scale,
        tie_word_embeddings=tied, init_std=0.3, dropout=0.0,
    )
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():  # non-zero bias so the test sees whether it is applied
        model.final_logits_bias.normal_(0.0, 1.0)
        model.final_logits_bias[0, 0] += 3.0  # favour </s> so some (not all) rows stop early
    model.generation_config.bad_words_ids = [[pad]]  # as in Opus-MT's generation_config.json
    model.generation_config.max_length = 24
    model.save_pretrained(str(ckpt))
    model = transformers.MarianMTModel.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    return ckpt, model, transformers.MarianTokenizer.from_pretrained(str(ckpt))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    """Tiny random Marian (plumbing/parity test): checkpoint, HF model/tokenizer, export, translator."""
    root = tmp_path_factory.mktemp(f"tiny-marian-{request.param}")
    ckpt, model, tokenizer = _build_checkpoint(root, *VARIANTS[request.param])
    result = export_marian(ckpt, root / "onnx")
    translator = MarianTranslator(root / "onnx", RuntimeConfig(providers=("cpu",), intra_op_threads=1))
    return {"name": request.param, "ckpt": ckpt, "model": model, "tokenizer": tokenizer,
            "export": result, "translator": translator}


def _hf_generate(model, tokenizer, texts, max_new_tokens):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=max_new_tokens)
    result = []
    for row in out[:, 1:].tolist():  # drop the decoder start token
        result.append(row[: row.index(0) + 1] if 0 in row else row)
    return result


def test_tiny_marian_tokenizer_matches_marian_tokenizer(tiny):
    codec, tokenizer = tiny["translator"].codec, tiny["tokenizer"]
    texts = TEXTS + ["", "  kalo   mi  ", "ne </s> ru"]
    assert [codec.encode(t) for t in texts] == tokenizer(texts).input_ids
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    samples = [[5, 6, 7, 0], [9, unk, 3, 12, 0], [4, 4, tokenizer.pad_token_id], []]
    assert [codec.decode(s) for s in samples] == tokenizer.batch_decode(samples, skip_special_tokens=True)


@pytest.mark.parametrize("max_new_tokens", [3, 20])
def test_tiny_marian_greedy_ids_match_transformers(tiny, max_new_tokens):
    """Tiny random Marian, plumbing/parity: ONNX greedy ids == generate(num_beams=1), batched and single."""
    translator, model, tokenizer = tiny["translator"], tiny["model"], tiny["tokenizer"]
    expected = _hf_generate(model, tokenizer, TEXTS, max_new_tokens)
    if max_new_tokens == 20:  # the batch must mix early </s> with rows that run on (pad feeding)
        assert len({len(ids) for ids in expected}) > 1
    source = [translator.codec.encode(t) for t in TEXTS]
    assert translator.generate_ids(source, max_new_tokens) == expected
    for text, want in zip(TEXTS[:2], expected):
        assert translator.generate_ids([translator.codec.encode(text)], max_new_tokens) == [want]


def test_tiny_marian_translate_matches_transformers_decode(tiny):
    translator, model, tokenizer = tiny["translator"], tiny["model"], tiny["tokenizer"]
    expected_ids = _hf_generate(model, tokenizer, TEXTS, None)  # generation_config.max_length applies
    assert translator.generate_ids([translator.codec.encode(t) for t in TEXTS]) == expected_ids
    assert translator.translate(TEXTS) == tokenizer.batch_decode(expected_ids, skip_special_tokens=True)
    assert translator.translate([]) == []


def test_tiny_marian_encoder_and_step_logits_match_transformers(tiny):
    """Encoder states, cross K/V and every KV-cached decoder step's logits vs transformers' forward."""
    translator, model, tokenizer = tiny["translator"], tiny["model"], tiny["tokenizer"]
    batch = tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    enc = translator.encode([translator.codec.encode(t) for t in TEXTS[:3]])
    mask = batch.attention_mask.numpy().astype(bool)
    with torch.no_grad():
        hf_states = model.model.encoder(**batch).last_hidden_state
        np.testing.assert_allclose(enc.hidden_states[mask], hf_states.numpy()[mask], atol=1e-4)
        for i, layer in enumerate(model.model.decoder.layers):
            k = layer.encoder_attn.k_proj(hf_states).view(3, -1, 2, 16).transpose(1, 2).numpy()
            np.testing.assert_allclose(enc.cross_kv[2 * i], k, atol=1e-4)

        # Teacher-force a fixed target prefix; compare logits position by position.
        start = model.config.decoder_start_token_id
        target = torch.tensor([[start, 5, 9, 7, 3, 11, 6]] * 3)
        hf_logits = model(**batch, decoder_input_ids=target).logits.numpy()
    cache = translator.empty_cache(3)
    for pos in range(target.shape[1]):
        step = translator.decode_step(enc, cache, target[:, pos : pos + 1].numpy())
        cache = step.cache
        np.testing.assert_allclose(step.logits, hf_logits[:, pos], atol=1e-4, err_msg=f"position {pos}")
    # Feeding several tokens in one call (a forced prefix) gives the same last-position logits.
    step = translator.decode_step(enc, translator.empty_cache(3), target.numpy())
    np.testing.assert_allclose(step.logits, hf_logits[:, -1], atol=1e-4)
    cache = step.cache
    assert cache.length == target.shape[1] and cache.self_kv[0].shape[2] == target.shape[1]


def test_tiny_marian_metadata_round_trip(tiny):
    result, config = tiny["export"], tiny["model"].config
    for path, model_type in ((result.encoder_path, "marian_encoder"), (result.decoder_path, "marian_decoder")):
        facts = read_metadata(path)
        assert facts.get("model_type") == model_type
        for key, value in result.facts.items():
            assert facts.get(key) == value, key
    facts = result.facts
    assert (facts["d_model"], facts["encoder_layers"], facts["decoder_layers"]) == (32, 2, 2)
    assert facts["decoder_attention_heads"] == 2 and facts["vocab_size"] == config.vocab_size
    assert facts["decoder_start_token_id"] == facts["pad_token_id"] == config.pad_token_id
    assert facts["eos_token_id"] == 0 and facts["forced_eos_token_id"] == 0
    assert facts["suppress_token_ids"] == [config.pad_token_id]
    assert facts["max_length"] == 24
    assert (facts["source_language"], facts["target_language"]) == ("src", "tgt")
    assert len(facts["source_sha256"]) == 64 and facts["provenance"].startswith("huggingface:")
    assert facts["activation_function"] == VARIANTS[tiny["name"]][0]
    translator = tiny["translator"]
    assert translator.facts.source_language == "src" and translator.facts.max_length == 24
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (result.encoder_path.parent / name).is_file()


def test_tiny_marian_vocab_matrix_written_once_when_tied(tiny):
    proto = onnx.load(str(tiny["export"].decoder_path))
    config = tiny["model"].config
    shapes = ([config.vocab_size, 32], [32, config.vocab_size])
    vocab_matrices = [t for t in proto.graph.initializer if list(t.dims) in shapes]
    tied = VARIANTS[tiny["name"]][2]
    assert len(vocab_matrices) == (1 if tied else 2)
    assert [o.name for o in proto.graph.output][0] == "logits"
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == config.vocab_size


def test_marian_runner_does_not_import_torch():
    code = ("import sys, relais_export.marian.runtime; "
            "sys.exit(int('torch' in sys.modules or 'transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_marian_export_errors_say_what_to_fix(tiny, tmp_path):
    with pytest.raises(ExportError, match="not found"):
        export_marian(tmp_path / "nowhere", tmp_path / "out")
    whisper = tmp_path / "whisper"
    whisper.mkdir()
    (whisper / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ExportError, match="'whisper' checkpoint, not Marian"):
        export_marian(whisper, tmp_path / "out")
    no_config = tmp_path / "empty"
    no_config.mkdir()
    with pytest.raises(ExportError, match="no config.json"):
        export_marian(no_config, tmp_path / "out")

    broken = tmp_path / "no-spm"
    broken.mkdir()
    for f in tiny["ckpt"].iterdir():
        if f.name != "target.spm":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ExportError, match=r"lacks tokenizer file\(s\) \['target.spm'\]"):
        export_marian(broken, tmp_path / "out")
    (broken / "target.spm").write_bytes((tiny["ckpt"] / "target.spm").read_bytes())
    (broken / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="no weights"):
        export_marian(broken, tmp_path / "out")
    assert not (tmp_path / "out" / ENCODER_FILE).exists() and not (tmp_path / "out" / DECODER_FILE).exists()


def test_tiny_marian_translator_rejects_bad_requests(tiny):
    translator = tiny["translator"]
    with pytest.raises(ValueError, match="max_new_tokens"):
        translator.generate_ids([[5, 0]], max_new_tokens=0)
    with pytest.raises(ValueError, match="at most 64"):
        translator.generate_ids([[5] * 70 + [0]], max_new_tokens=2)
    with pytest.raises(ValueError, match="non-empty"):
        translator.encode([[]])
