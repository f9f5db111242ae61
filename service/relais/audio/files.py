"""Audio files: anything soundfile (libsndfile) reads, as the service's callers need it.

* :func:`read_mono`: mono float32, at 16 kHz (the pipeline's rate) or the file's own.
* :func:`load_audio_16k`: the same as a bare array at 16 kHz (eval, parity checks).
* :func:`read_pcm16`: int16 frames x channels at the file's own rate, as a client
  streams them (the server mixes the channels down).
* :func:`decode_file_bytes`: a whole file a client sent (FLAC, OGG Opus/Vorbis, WAV...)
  as mono float32 at its own rate; :func:`sniff_container` names its container.

An unreadable file raises ``ValueError`` naming it; undecodable client bytes raise
``InvalidRequest`` (the client's to fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from relais.audio import PIPELINE_RATE_HZ
from relais.audio.pcm import resample
from relais.errors import InvalidRequest

_MAGIC = {b"RIFF": "WAV", b"fLaC": "FLAC", b"OggS": "OGG"}


@dataclass(frozen=True)
class AudioData:
    samples: np.ndarray  # (frames,) mono, or (frames, channels)
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz if self.sample_rate_hz else 0.0


def _read(path: str | Path, dtype: str) -> AudioData:
    import soundfile as sf

    try:
        samples, rate_hz = sf.read(str(path), dtype=dtype, always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio file {path}: {exc}") from None
    return AudioData(samples, int(rate_hz))


def read_mono(path: str | Path, rate_hz: int | None = PIPELINE_RATE_HZ) -> AudioData:
    """Mono float32 (channels averaged), resampled to ``rate_hz`` (None: the file's own rate)."""
    audio = _read(path, "float32")
    mono = audio.samples.mean(axis=1)
    if rate_hz is None:
        return AudioData(np.ascontiguousarray(mono, dtype=np.float32), audio.sample_rate_hz)
    return AudioData(resample(mono, audio.sample_rate_hz, rate_hz), rate_hz)


def load_audio_16k(path: str | Path) -> np.ndarray:
    """Mono float32 at 16 kHz, whatever the file's rate and channel count."""
    return read_mono(path).samples


def read_pcm16(path: str | Path) -> AudioData:
    """int16 samples, frames x channels, at the file's own rate."""
    return _read(path, "int16")


def sniff_container(data: bytes) -> str | None:
    """"WAV", "FLAC" or "OGG" when ``data`` starts like such a file, else None (raw samples, or unknown)."""
    return _MAGIC.get(bytes(data[:4]))


def decode_file_bytes(data: bytes, what: str = "audio") -> AudioData:
    """A whole audio file held in memory as mono float32 at its own rate (channels averaged)."""
    import io

    import soundfile as sf

    try:
        samples, rate_hz = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        reason = (getattr(exc, "error_string", "") or str(exc)).rstrip(".")  # libsndfile's reason, no stream repr
        raise InvalidRequest(f"cannot decode the {what} ({len(data)} bytes): {reason}; send a whole FLAC, "
                             f"OGG (Opus or Vorbis) or WAV file") from None
    return AudioData(np.ascontiguousarray(samples.mean(axis=1), dtype=np.float32), int(rate_hz))
