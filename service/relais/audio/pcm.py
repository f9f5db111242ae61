"""Whole-buffer sample conversions: int16 PCM <-> float32 in [-1, 1], clipping, resampling.

Decoding scales by 1/32768 (exact: every int16 maps into [-1, 1)); encoding clips to
[-1, 1], scales by 32767 and rounds, so full scale never wraps around.
"""

from __future__ import annotations

import numpy as np

PCM16_DECODE_SCALE = 1.0 / 32768.0
PCM16_ENCODE_SCALE = 32767.0


def pcm16_to_float(samples: bytes | np.ndarray) -> np.ndarray:
    """Little-endian int16 PCM (bytes, a trailing odd byte dropped, or an int16 array) as float32."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        data = bytes(samples)
        samples = np.frombuffer(data[:len(data) - len(data) % 2], dtype="<i2")
    return samples.astype(np.float32) * np.float32(PCM16_DECODE_SCALE)


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples (any shape) as little-endian int16, clipped to full scale."""
    return np.round(np.clip(np.asarray(audio), -1.0, 1.0) * PCM16_ENCODE_SCALE).astype("<i2")


def as_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples as they are; float samples in [-1, 1] converted (clipped); anything else refused."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples
    if np.issubdtype(samples.dtype, np.floating):
        return float_to_pcm16(samples)
    raise ValueError(f"audio must be int16 or float in [-1, 1], got {samples.dtype}")


def resample(audio: np.ndarray, rate_hz: int, to_rate_hz: int) -> np.ndarray:
    """Mono float32 ``audio`` at ``rate_hz`` resampled to ``to_rate_hz`` (soxr, high quality)."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if rate_hz == to_rate_hz or not audio.size:
        return audio
    import soxr

    return soxr.resample(audio, rate_hz, to_rate_hz, quality="HQ").astype(np.float32, copy=False)


# --- G.711 (8-bit companded telephone audio) ----------------------------------------------------

def _mulaw_table() -> np.ndarray:
    """The 256 µ-law codes as int16 (ITU-T G.711: bits inverted, sign, 3-bit exponent, 4-bit mantissa)."""
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """The 256 A-law codes as int16 (ITU-T G.711: even bits inverted; a set sign bit is positive)."""
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


_G711_TABLES = {"MULAW": _mulaw_table(), "ALAW": _alaw_table()}


def g711_to_float(codes: bytes | np.ndarray, law: str) -> np.ndarray:
    """G.711 bytes (``law`` "MULAW" or "ALAW") as float32, on the same scale as decoded int16 PCM."""
    table = _G711_TABLES[law]
    return pcm16_to_float(table[np.frombuffer(bytes(codes), dtype=np.uint8)])
