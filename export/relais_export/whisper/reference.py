"""The transformers reference decoder that the ONNX export is checked against.

A plain greedy loop over ``WhisperForConditionalGeneration`` (no KV cache: the whole
prefix is re-run each step) with Whisper's suppression rules, on features from
transformers' own WhisperFeatureExtractor (audio zero-padded to 30 s).
"""

from __future__ import annotations

import numpy as np

from relais_export.errors import require
from relais_export.whisper.checkpoint import WhisperCheckpoint


def reference_features(ckpt: WhisperCheckpoint, audio: np.ndarray) -> np.ndarray:
    transformers = require("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=ckpt.model.config.num_mel_bins)
    return fe(audio, sampling_rate=16000, return_tensors="np").input_features  # [1, n_mels, 3000]


def reference_greedy(ckpt: WhisperCheckpoint, audio: np.ndarray, prompt: list[int], max_new_tokens: int = 200) -> list[int]:
    torch = require("torch")
    model = ckpt.model
    eot = model.config.eos_token_id
    features = torch.from_numpy(reference_features(ckpt, audio))
    out: list[int] = []
    with torch.no_grad():
        enc = model.model.encoder(features)
        for _ in range(max_new_tokens):
            ids = torch.tensor([prompt + out])
            logits = model(encoder_outputs=enc, decoder_input_ids=ids, use_cache=False).logits[0, -1].double()
            logits[ckpt.suppress_ids] = -float("inf")
            if not out:
                logits[ckpt.suppress_ids_begin] = -float("inf")
            token = int(torch.argmax(logits))
            if token == eot:
                break
            out.append(token)
    return out
