"""Whisper log-mel features in numpy (no torch): STFT power -> mel -> log10 -> scale.

Matches the reference feature extractor: periodic Hann window, centred frames with
reflect padding, the last frame dropped, a floor of max-8 (in log10 units), then
(x + 4) / 4. The mel filterbank is exported with the model (mel_filters.npy).
"""

from __future__ import annotations

import numpy as np


class LogMel:
    def __init__(self, filters: np.ndarray, n_fft: int = 400, hop_length: int = 160):
        if filters.ndim != 2 or filters.shape[0] != n_fft // 2 + 1:
            raise ValueError(f"mel filters must be [{n_fft // 2 + 1}, n_mels], got {filters.shape}")
        self.filters = filters.astype(np.float32)
        self.n_fft = n_fft
        self.hop_length = hop_length
        n = np.arange(n_fft)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)).astype(np.float32)

    @property
    def n_mels(self) -> int:
        return self.filters.shape[1]

    def __call__(self, audio: np.ndarray, pad_to_samples: int = 0) -> np.ndarray:
        """[n_mels, frames] for 16 kHz mono float32 audio; frames = samples // hop.

        ``pad_to_samples`` zero-pads the audio first (Whisper's training setup pads
        every window to 30 s = 480000 samples).
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if pad_to_samples > len(audio):
            audio = np.pad(audio, (0, pad_to_samples - len(audio)))
        if len(audio) < self.hop_length:
            raise ValueError(f"need at least {self.hop_length} samples of audio, got {len(audio)}")
        half = self.n_fft // 2
        padded = np.pad(audio, half, mode="reflect")
        n_frames = 1 + (len(padded) - self.n_fft) // self.hop_length
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length][:n_frames]
        power = np.abs(np.fft.rfft(frames * self.window, axis=-1)) ** 2
        mel = (power.astype(np.float32) @ self.filters).T[:, :-1]
        log_mel = np.log10(np.maximum(mel, 1e-10))
        log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
        return ((log_mel + 4.0) / 4.0).astype(np.float32)
