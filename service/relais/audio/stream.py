"""Streaming audio decoding (client bytes -> 16 kHz mono float32) and encoding (voice -> client).

Encodings are named as in the proto enum (``PCM_S16LE``, ``PCM_F32LE``, ``WAV``,
``AUDIO_ENCODING_UNSPECIFIED``), plus G.711 ``MULAW`` and ``ALAW`` (8-bit telephone
audio, as Riva's API sends it; also inside a WAV file). Chunks may be any size: partial
frames and a WAV header split across chunks are carried over. Resampling uses soxr's
streaming resampler, so the output does not depend on how the input was chunked.
Error messages name the client's fields as its API spells them (``FormatFields``).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import numpy as np

from relais.audio import PIPELINE_RATE_HZ
from relais.audio.pcm import float_to_pcm16, g711_to_float, pcm16_to_float, resample
from relais.errors import InvalidRequest

log = logging.getLogger(__name__)

__all__ = ["PIPELINE_RATE_HZ", "AudioFormatSpec", "FormatFields", "InputDecoder", "OutputEncoder", "PcmLayout",
           "WavHeader", "parse_wav_header"]
MIN_RATE_HZ, MAX_RATE_HZ = 8000, 192000
MAX_CHANNELS = 32
UNSPECIFIED = "AUDIO_ENCODING_UNSPECIFIED"
PCM_S16LE, PCM_F32LE, WAV = "PCM_S16LE", "PCM_F32LE", "WAV"
MULAW, ALAW = "MULAW", "ALAW"  # G.711, one byte per sample
_SAMPLE_DTYPES = {PCM_S16LE: np.dtype("<i2"), PCM_F32LE: np.dtype("<f4"), MULAW: np.dtype("u1"),
                  ALAW: np.dtype("u1")}
_MAX_WAV_HEADER_BYTES = 1 << 20
_WAVE_FORMAT_PCM, _WAVE_FORMAT_FLOAT, _WAVE_FORMAT_EXTENSIBLE = 1, 3, 0xFFFE
_WAVE_FORMAT_ALAW, _WAVE_FORMAT_MULAW = 6, 7


@dataclass(frozen=True)
class FormatFields:
    """How the client's API names the input format, so that an error names what to fix.

    The defaults are relais.v1's; Riva's adapter passes its own (``config.sample_rate_hertz``...).
    """

    encoding: str = "input_format.encoding"
    sample_rate: str = "input_format.sample_rate_hz"
    channels: str = "input_format.channels"
    raw_default: str = "PCM_S16LE (the default input encoding); or send a WAV file with encoding WAV"


@dataclass(frozen=True)
class AudioFormatSpec:
    """What the client said about its audio (proto AudioFormat, with the enum as its name)."""

    encoding: str = UNSPECIFIED
    sample_rate_hz: int = 0
    channels: int = 0  # 0 = mono


def check_rate(rate_hz: int, key: str) -> None:
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise InvalidRequest(f"{key}: sample rate {rate_hz} Hz is outside {MIN_RATE_HZ}..{MAX_RATE_HZ}")


def _resampler(in_rate_hz: int, out_rate_hz: int):
    if in_rate_hz == out_rate_hz:
        return None
    import soxr

    return soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="float32", quality="HQ")


@dataclass(frozen=True)
class PcmLayout:
    """How raw samples are laid out: encoding, rate and interleaved channels."""

    encoding: str  # PCM_S16LE, PCM_F32LE, MULAW or ALAW
    sample_rate_hz: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return _SAMPLE_DTYPES[self.encoding].itemsize * self.channels


@dataclass(frozen=True)
class WavHeader:
    """What a RIFF/WAVE header says: the sample layout and where the samples are."""

    layout: PcmLayout
    data_offset: int  # bytes from the start of the file to the first sample
    data_bytes: int | None  # size of the 'data' chunk; None: unbounded (a streaming writer left it open)


class InputDecoder:
    """Bytes in the client's format -> float32 mono 16 kHz, chunk by chunk.

    ``decode(chunk)`` returns whatever audio is complete so far (maybe empty);
    ``flush()`` returns the resampler's tail at the end of the stream.
    """

    def __init__(self, fmt: AudioFormatSpec, fields: FormatFields = FormatFields()):
        channels = fmt.channels or 1
        if not 1 <= channels <= MAX_CHANNELS:
            raise InvalidRequest(f"{fields.channels} {channels} is outside 1..{MAX_CHANNELS}")
        self._encoding = fmt.encoding or UNSPECIFIED
        self._fmt = fmt
        self._fields = fields
        self._channels = channels
        self._pending = bytearray()  # header bytes, or a partial frame
        self._resampler = None
        self.frames_in = 0  # input frames decoded so far
        self._layout: PcmLayout | None = None
        self._wav_data_left: int | None = None  # bytes of the WAV data chunk still expected (None: unbounded)
        if self._encoding in _SAMPLE_DTYPES:
            if not fmt.sample_rate_hz:
                raise InvalidRequest(f"{fields.sample_rate} is required for {self._encoding}")
            check_rate(fmt.sample_rate_hz, fields.sample_rate)
            self._set_layout(PcmLayout(self._encoding, fmt.sample_rate_hz, channels))
        elif self._encoding == UNSPECIFIED:
            # PCM_S16LE, unless the first bytes are a RIFF header; the rate is needed only for PCM.
            if fmt.sample_rate_hz:
                check_rate(fmt.sample_rate_hz, fields.sample_rate)
        elif self._encoding != WAV:
            raise InvalidRequest(f"{fields.encoding} {self._encoding} is not supported; "
                                 f"use PCM_S16LE, PCM_F32LE or WAV")

    # --- public ---------------------------------------------------------------------------------

    @property
    def input_rate_hz(self) -> int | None:
        return self._layout.sample_rate_hz if self._layout else None

    @property
    def received_s(self) -> float:
        """Seconds of source audio decoded so far (at the input rate, before resampling)."""
        return self.frames_in / self._layout.sample_rate_hz if self._layout else 0.0

    def decode(self, chunk: bytes) -> np.ndarray:
        self._pending += chunk
        if self._layout is None and not self._read_header():
            return np.zeros(0, np.float32)
        return self._resample(self._take_frames(), last=False)

    def flush(self) -> np.ndarray:
        if self._layout is None:
            if self._pending:
                raise InvalidRequest("the stream ended inside the WAV header (no 'data' chunk found)")
            return np.zeros(0, np.float32)
        if self._pending:
            log.debug("dropping %d trailing bytes (a partial frame)", len(self._pending))
            self._pending.clear()
        return self._resample(np.zeros(0, np.float32), last=True)

    # --- internals ------------------------------------------------------------------------------

    def _set_layout(self, layout: PcmLayout) -> None:
        self._layout = layout
        self._resampler = _resampler(layout.sample_rate_hz, PIPELINE_RATE_HZ)

    def _read_header(self) -> bool:
        """Settle the layout from the first bytes; False while more bytes are needed."""
        if self._encoding == UNSPECIFIED:
            if len(self._pending) < 4:
                return False
            if bytes(self._pending[:4]) != b"RIFF":
                if not self._fmt.sample_rate_hz:
                    raise InvalidRequest(f"{self._fields.sample_rate} is required for {self._fields.raw_default}")
                self._set_layout(PcmLayout(PCM_S16LE, self._fmt.sample_rate_hz, self._channels))
                return True
        header = parse_wav_header(bytes(self._pending))
        if header is None:
            if len(self._pending) > _MAX_WAV_HEADER_BYTES:
                raise InvalidRequest(f"no WAV 'data' chunk within the first {_MAX_WAV_HEADER_BYTES} bytes")
            return False
        if self._fmt.sample_rate_hz and self._fmt.sample_rate_hz != header.layout.sample_rate_hz:
            log.info("WAV header says %d Hz, config said %d Hz: using the header",
                     header.layout.sample_rate_hz, self._fmt.sample_rate_hz)
        del self._pending[:header.data_offset]
        self._wav_data_left = header.data_bytes
        self._set_layout(header.layout)
        return True

    def _take_frames(self) -> np.ndarray:
        layout = self._layout
        usable = len(self._pending)
        if self._wav_data_left is not None:
            usable = min(usable, self._wav_data_left)
        usable -= usable % layout.frame_bytes
        raw = bytes(self._pending[:usable])
        del self._pending[:usable]
        if self._wav_data_left is not None:
            self._wav_data_left -= usable
            if self._wav_data_left < layout.frame_bytes:
                self._pending.clear()  # chunks after the data (LIST...) are not audio
        audio = _to_float(raw, layout.encoding)
        if layout.encoding == PCM_F32LE and not np.isfinite(audio).all():
            bad = int(np.flatnonzero(~np.isfinite(audio))[0]) // layout.channels
            raise InvalidRequest(f"PCM_F32LE audio has a NaN or infinite sample (frame {self.frames_in + bad}); "
                                 f"send finite float32 samples in -1..1")
        if layout.channels > 1:
            audio = audio.reshape(-1, layout.channels).mean(axis=1, dtype=np.float32)
        self.frames_in += len(audio)
        return audio

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return np.ascontiguousarray(audio, dtype=np.float32)
        return self._resampler.resample_chunk(np.ascontiguousarray(audio, dtype=np.float32), last=last)


def _to_float(raw: bytes, encoding: str) -> np.ndarray:
    """Whole frames of interleaved samples as float32."""
    if encoding in (MULAW, ALAW):
        return g711_to_float(raw, encoding)
    samples = np.frombuffer(raw, dtype=_SAMPLE_DTYPES[encoding])
    return pcm16_to_float(samples) if encoding == PCM_S16LE else samples.astype(np.float32)


def parse_wav_header(data: bytes) -> WavHeader | None:
    """The header at the start of ``data``, or None while it is incomplete (no 'data' chunk yet)."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidRequest("input is not a WAV file (no RIFF/WAVE header); set input_format.encoding "
                             "to PCM_S16LE or PCM_F32LE for raw samples")
    pos, layout = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            if layout is None:
                raise InvalidRequest("WAV: the 'data' chunk comes before the 'fmt ' chunk")
            unbounded = size in (0, 0xFFFFFFFF)  # streaming writers leave the size open
            return WavHeader(layout, body, None if unbounded else size)
        if chunk_id == b"fmt ":
            if body + size > len(data):
                return None
            layout = _wav_layout(data[body:body + size])
        pos = body + size + (size & 1)  # chunks are word-aligned
    return None


def _wav_layout(fmt: bytes) -> PcmLayout:
    if len(fmt) < 16:
        raise InvalidRequest(f"WAV: 'fmt ' chunk is {len(fmt)} bytes, expected at least 16")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # first two bytes of the sub-format GUID
    if tag == _WAVE_FORMAT_PCM and bits == 16:
        encoding = PCM_S16LE
    elif tag == _WAVE_FORMAT_FLOAT and bits == 32:
        encoding = PCM_F32LE
    elif tag in (_WAVE_FORMAT_MULAW, _WAVE_FORMAT_ALAW) and bits == 8:
        encoding = MULAW if tag == _WAVE_FORMAT_MULAW else ALAW
    else:
        kind = {_WAVE_FORMAT_PCM: "PCM", _WAVE_FORMAT_FLOAT: "float"}.get(tag, f"format tag {tag:#x}")
        raise InvalidRequest(f"WAV: {bits}-bit {kind} is not supported; send 16-bit PCM or 32-bit float WAV "
                             f"(or 8-bit G.711 mu-law/A-law; e.g. `sox in.wav -b 16 out.wav`)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidRequest(f"WAV: {channels} channels is outside 1..{MAX_CHANNELS}")
    check_rate(rate, "WAV sample rate")
    return PcmLayout(encoding, rate, channels)


class OutputEncoder:
    """Voice-rate float32 phrases -> client bytes at the requested rate (mono)."""

    def __init__(self, fmt: AudioFormatSpec, voice_rate_hz: int):
        encoding = fmt.encoding or UNSPECIFIED
        if encoding == UNSPECIFIED:
            encoding = PCM_S16LE
        if encoding not in _SAMPLE_DTYPES:
            raise InvalidRequest(f"output_format.encoding {encoding} is not supported for streamed speech; "
                                 f"use PCM_S16LE or PCM_F32LE")
        if fmt.channels not in (0, 1):
            raise InvalidRequest(f"output_format.channels {fmt.channels}: output is mono, use 0 or 1")
        if fmt.sample_rate_hz:
            check_rate(fmt.sample_rate_hz, "output_format.sample_rate_hz")
        self.encoding = encoding
        self.sample_rate_hz = fmt.sample_rate_hz or voice_rate_hz
        self.samples_out = 0

    @property
    def position_s(self) -> float:
        """Seconds of audio encoded so far (where the next chunk starts in the output stream)."""
        return self.samples_out / self.sample_rate_hz

    def encode(self, audio: np.ndarray, rate_hz: int) -> bytes:
        """One whole phrase (resampled on its own: phrases are separate utterances)."""
        audio = resample(np.asarray(audio, dtype=np.float32).reshape(-1), rate_hz, self.sample_rate_hz)
        self.samples_out += len(audio)
        if self.encoding == PCM_F32LE:
            return audio.astype("<f4", copy=False).tobytes()
        return float_to_pcm16(audio).tobytes()
