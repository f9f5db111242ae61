"""relais.audio: streaming input decoding and output encoding, PCM conversion, files (synthetic audio, no models)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from relais.audio.files import load_audio_16k, read_mono, read_pcm16
from relais.audio.pcm import as_pcm16, float_to_pcm16, pcm16_to_float
from relais.audio.stream import AudioFormatSpec, InputDecoder, OutputEncoder, PcmLayout, WavHeader, parse_wav_header

RATE = 16000


def tone(freq_hz: float, rate_hz: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate_hz)[np.argmax(spectrum)])


def pcm16(audio: np.ndarray) -> bytes:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()


def wav_bytes(audio: np.ndarray, rate_hz: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate_hz, format="WAV", subtype=subtype)
    return buf.getvalue()


def decode_all(decoder: InputDecoder, data: bytes, chunk_bytes: int) -> np.ndarray:
    parts = [decoder.decode(data[i:i + chunk_bytes]) for i in range(0, len(data), chunk_bytes)]
    return np.concatenate([*parts, decoder.flush()])


def test_pcm16_16k_passthrough_with_odd_chunks():
    audio = tone(440, RATE, 0.5)
    out = decode_all(InputDecoder(AudioFormatSpec("PCM_S16LE", RATE)), pcm16(audio), chunk_bytes=333)
    assert out.dtype == np.float32 and len(out) == len(audio)
    np.testing.assert_allclose(out, audio, atol=1e-4)


def test_f32_stereo_is_averaged_to_mono():
    left, right = tone(440, RATE, 0.25), np.zeros(int(RATE * 0.25), np.float32)
    data = np.stack([left, right], axis=1).astype("<f4").tobytes()
    out = decode_all(InputDecoder(AudioFormatSpec("PCM_F32LE", RATE, channels=2)), data, chunk_bytes=1001)
    np.testing.assert_allclose(out, left / 2, atol=1e-6)


@pytest.mark.parametrize("rate_hz", [44100, 8000])
def test_resampled_tone_keeps_its_frequency(rate_hz):
    audio = tone(440, rate_hz, 1.0)
    out = decode_all(InputDecoder(AudioFormatSpec("PCM_S16LE", rate_hz)), pcm16(audio), chunk_bytes=4410)
    assert abs(len(out) - RATE) <= 2  # flushed: the full second comes out
    assert abs(peak_hz(out, RATE) - 440) < 3


def test_resampling_is_chunk_size_independent():
    data = pcm16(tone(440, 44100, 0.5) + tone(3000, 44100, 0.5, amp=0.2))
    outs = [decode_all(InputDecoder(AudioFormatSpec("PCM_S16LE", 44100)), data, n) for n in (1, 37, 882, len(data))]
    for out in outs[1:]:
        assert len(out) == len(outs[0])
        np.testing.assert_allclose(out, outs[0], atol=1e-5)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_wav_header_split_across_chunks(subtype):
    audio = np.stack([tone(440, 22050, 0.5), tone(440, 22050, 0.5)], axis=1)
    data = wav_bytes(audio, 22050, subtype)
    for encoding in ("WAV", "AUDIO_ENCODING_UNSPECIFIED"):  # unspecified sniffs the RIFF header
        decoder = InputDecoder(AudioFormatSpec(encoding))
        assert len(decoder.decode(data[:3])) == 0 and len(decoder.decode(data[3:30])) == 0  # inside the header
        out = np.concatenate([decoder.decode(data[30:1000]), decoder.decode(data[1000:]), decoder.flush()])
        assert decoder.input_rate_hz == 22050 and abs(decoder.received_s - 0.5) < 1e-9
        assert abs(len(out) - RATE // 2) <= 2 and abs(peak_hz(out, RATE) - 440) < 5


def test_wav_trailing_chunk_is_not_audio():
    data = wav_bytes(tone(440, RATE, 0.1), RATE) + b"LIST" + struct.pack("<I", 4) + b"abcd"
    out = decode_all(InputDecoder(AudioFormatSpec("WAV")), data, 100)
    assert len(out) == int(RATE * 0.1)


def test_wav_24_bit_is_refused_with_advice():
    data = wav_bytes(tone(440, RATE, 0.1), RATE, "PCM_24")
    with pytest.raises(ValueError, match="24-bit PCM is not supported; send 16-bit PCM or 32-bit float"):
        InputDecoder(AudioFormatSpec("WAV")).decode(data)


def test_parse_wav_header_incomplete_then_complete():
    data = wav_bytes(tone(440, RATE, 0.01), RATE)
    assert parse_wav_header(data[:20]) is None
    header = parse_wav_header(data)
    assert isinstance(header, WavHeader) and header.layout == PcmLayout("PCM_S16LE", RATE, 1)
    assert header.data_bytes == len(data) - header.data_offset


@pytest.mark.parametrize("spec, message", [
    (AudioFormatSpec("PCM_S16LE"), "input_format.sample_rate_hz is required for PCM_S16LE"),
    (AudioFormatSpec("PCM_F32LE", 1000), "sample rate 1000 Hz is outside 8000..192000"),
    (AudioFormatSpec("PCM_S16LE", 16000, channels=64), "channels 64 is outside 1..32"),
])
def test_input_validation_says_what_to_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        InputDecoder(spec)


def test_unspecified_raw_pcm_needs_a_rate():
    with pytest.raises(ValueError, match="sample_rate_hz is required for PCM_S16LE"):
        InputDecoder(AudioFormatSpec()).decode(b"\x00\x01\x02\x03")
    out = InputDecoder(AudioFormatSpec(sample_rate_hz=RATE)).decode(pcm16(tone(440, RATE, 0.01)))
    assert len(out) == 160


def test_output_encoder_resamples_and_encodes():
    audio = tone(440, 22050, 0.5)
    enc = OutputEncoder(AudioFormatSpec("PCM_S16LE", 48000), voice_rate_hz=22050)
    data = enc.encode(audio, 22050)
    pcm = np.frombuffer(data, "<i2").astype(np.float32) / 32767
    assert abs(len(pcm) - 24000) <= 2 and abs(enc.position_s - 0.5) < 1e-3
    assert abs(peak_hz(pcm, 48000) - 440) < 3
    f32 = OutputEncoder(AudioFormatSpec("PCM_F32LE"), voice_rate_hz=22050)
    assert f32.sample_rate_hz == 22050
    np.testing.assert_array_equal(np.frombuffer(f32.encode(audio, 22050), "<f4"), audio)


@pytest.mark.parametrize("spec, message", [
    (AudioFormatSpec("WAV"), "output_format.encoding WAV is not supported"),
    (AudioFormatSpec("PCM_S16LE", 500), "sample rate 500 Hz is outside"),
    (AudioFormatSpec("PCM_S16LE", channels=2), "output is mono"),
])
def test_output_validation(spec, message):
    with pytest.raises(ValueError, match=message):
        OutputEncoder(spec, voice_rate_hz=22050)


def test_pcm16_round_trip_and_clipping():
    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -1.7], np.float32)
    pcm = float_to_pcm16(audio)
    assert pcm.dtype == np.dtype("<i2") and list(pcm[3:]) == [32767, -32767, 32767, -32767]
    assert pcm16_to_float(pcm.tobytes() + b"\x01").tolist() == pytest.approx((pcm / 32768).tolist())  # odd byte dropped
    assert pcm16_to_float(np.array([-32768], np.int16))[0] == -1.0
    assert as_pcm16(pcm) is pcm and as_pcm16(audio.astype(np.float64)).tolist() == pcm.tolist()
    with pytest.raises(ValueError, match="int16 or float"):
        as_pcm16(np.zeros(3, np.int32))


def test_files_mono_16k_own_rate_and_pcm16(tmp_path):
    stereo = np.stack([tone(440, 22050, 0.5), np.zeros(11025, np.float32)], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 22050, subtype="PCM_16")
    at_16k = load_audio_16k(path)
    assert at_16k.dtype == np.float32 and abs(len(at_16k) - RATE // 2) <= 2
    assert abs(peak_hz(at_16k, RATE) - 440) < 5
    own = read_mono(path, rate_hz=None)
    assert own.sample_rate_hz == 22050 and own.duration_s == pytest.approx(0.5)
    np.testing.assert_allclose(own.samples, stereo.mean(axis=1), atol=1e-4)
    pcm = read_pcm16(path)
    assert pcm.samples.dtype == np.int16 and pcm.samples.shape == (11025, 2) and pcm.sample_rate_hz == 22050
    with pytest.raises(ValueError, match="cannot read audio file"):
        read_mono(tmp_path / "missing.wav")
