"""The streaming client, WebVTT subtitles and the `relais translate` / `relais serve` commands.

Subtitle and client-plumbing tests need no models (the plumbing runs against a tiny
in-test servicer); the end-to-end tests run the real CLI in-process on the prepared
default model set.
"""

from __future__ import annotations

import io
import re
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from relais import cli
from relais.client import Arrival, TextReceived, TranslateClient, TranslateOptions, _assemble
from relais.subtitles import (Cue, build_cues, format_timestamp, merge_spans, parse_timestamp, parse_vtt, render_vtt,
                              split_cue, wrap_lines)
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "data" / "samples" / "fr_fleurs_1857.wav"
REFERENCE_EN = ("he added that they should not however be asked to take on obligations that go beyond their "
                "development stage responsibility and capabilities")


# --- subtitles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [
    (0.0, "00:00:00.000"), (1.5, "00:00:01.500"), (61.25, "00:01:01.250"), (3661.007, "01:01:01.007"),
    (1.9996, "00:00:02.000"), (-0.3, "00:00:00.000"), (36000.0, "10:00:00.000"),
])
def test_timestamp_format(seconds, text):
    assert format_timestamp(seconds) == text
    if seconds >= 0:
        assert parse_timestamp(text) == pytest.approx(round(seconds, 3))


def test_timestamp_parse_rejects_garbage():
    assert parse_timestamp("01:02.500") == pytest.approx(62.5)
    for bad in ("1.5", "00:00:01,500", "00:61:00.000"):
        with pytest.raises(ValueError, match="WebVTT timestamp"):
            parse_timestamp(bad)


def test_wrap_lines_respects_width_and_keeps_words():
    text = "he added that they should not however be asked to take on obligations that go beyond"
    lines = wrap_lines(text, 42)
    assert all(len(line) <= 42 for line in lines) and len(lines) == 3
    assert " ".join(lines) == text
    assert wrap_lines("", 42) == [] and wrap_lines("   ", 42) == []
    assert wrap_lines("a" * 50 + " b", 42) == ["a" * 42, "a" * 8 + " b"]  # an over-long word is cut


def test_split_cue_two_lines_max_and_proportional_times():
    text = " ".join(f"word{i}" for i in range(40))
    cues = split_cue(10.0, 20.0, text)
    assert len(cues) > 1
    assert all(len(c.text.split("\n")) <= 2 and all(len(line) <= 42 for line in c.text.split("\n")) for c in cues)
    assert " ".join(" ".join(c.text.split("\n")) for c in cues) == text
    assert cues[0].start_s == 10.0 and cues[-1].end_s == 20.0
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(cues, cues[1:]))
    assert all(c.end_s > c.start_s for c in cues)
    # two lines are balanced rather than greedy (no lone word on the second line)
    (cue,) = split_cue(0.0, 2.0, "ask him to assume the obligations that are not")
    assert cue.text == "ask him to assume the\nobligations that are not"


def test_build_cues_monotonic_and_drops_empty():
    cues = build_cues([(2.0, 3.0, "second"), (0.0, 2.5, "first"), (3.0, 3.0, "zero length"), (3.0, 4.0, "  ")])
    assert [c.text for c in cues] == ["first", "second"]
    assert cues[1].start_s == 2.5  # overlap moved past the previous cue's end
    assert merge_spans([(0.0, 1.0, "a"), (1.0, 2.0, "a"), (2.0, 3.0, "b"), (3.5, 4.0, "b")]) == \
        [(0.0, 2.0, "a"), (2.0, 3.0, "b"), (3.5, 4.0, "b")]


def test_render_and_parse_vtt_round_trip():
    cues = [Cue(0.0, 1.25, "hello there"), Cue(1.25, 3661.5, "two\nlines")]
    document = render_vtt(cues)
    assert document.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:01.250\nhello there\n\n2\n")
    assert "01:01:01.500" in document
    assert parse_vtt(document) == cues
    assert render_vtt([]) == "WEBVTT\n"
    with pytest.raises(ValueError, match="WEBVTT"):
        parse_vtt("1\n00:00:00.000 --> 00:00:01.000\nx\n")


# --- client plumbing (no models) ---------------------------------------------------------------

class _EchoServicer(pb_grpc.SpeechTranslatorServicer):
    """Answers every audio chunk at once with a text event and 0.1 s of output audio."""

    rate_hz = 8000

    def Translate(self, request_iterator, context):
        first = next(request_iterator)
        assert first.WhichOneof("request") == "config"
        yield pb.TranslateResponse(started=pb.SessionStarted(
            session_id="t", task="translate", output_format=pb.AudioFormat(encoding=pb.PCM_S16LE,
                                                                          sample_rate_hz=self.rate_hz)))
        received, position_s = 0, 0.0
        in_rate = first.config.input_format.sample_rate_hz
        for i, request in enumerate(request_iterator):
            received += len(request.audio.data) // 2
            yield pb.TranslateResponse(text=pb.TextEvent(kind=pb.TextEvent.TRANSLATION_FINAL, text=f"w{i}",
                                                         source_span=pb.TimeSpan(end_s=received / in_rate)))
            pcm = np.full(self.rate_hz // 10, 1000 * (i + 1), np.int16)
            yield pb.TranslateResponse(audio=pb.AudioOut(data=pcm.tobytes(), sample_rate_hz=self.rate_hz,
                                                         text=f"w{i}", output_start_s=position_s))
            position_s += 0.1
        yield pb.TranslateResponse(summary=pb.Summary(audio_in_s=received / in_rate, audio_out_s=position_s))


@pytest.fixture()
def echo_address():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_SpeechTranslatorServicer_to_server(_EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_client_receives_while_sending_and_assembles_audio(echo_address):
    audio = np.zeros(16000, np.float32)  # 1 s, sent at 4x real time in 100 ms chunks
    with TranslateClient(echo_address) as client:
        result = client.translate_audio(audio, 16000, TranslateOptions(target_language="en", speed=4.0))
    texts = result.texts
    assert len(texts) == 10 and result.translation == " ".join(f"w{i}" for i in range(10))
    # responses came back while audio was still going out, stamped in order
    assert texts[0].arrival.sent_source_s < 0.5
    arrivals = [e.arrival.arrival_s for e in result.events if hasattr(e, "arrival")]
    assert arrivals == sorted(arrivals)
    assert result.timings.audio_in_s == pytest.approx(1.0)
    assert 0.15 < result.timings.send_wall_s < 1.0  # paced: 0.9 s of audio after the first chunk, at 4x
    assert result.output_sample_rate_hz == 8000 and result.audio_out_s == pytest.approx(1.0)
    assert result.audio[0] == pytest.approx(1000 / 32768) and result.audio[-1] == pytest.approx(10000 / 32768)
    assert result.summary is not None and result.summary.audio_in_s == pytest.approx(1.0)


def test_assemble_places_chunks_by_output_position():
    out = _assemble([(0.0, np.ones(10, np.float32)), (2.0, np.full(5, 2.0, np.float32))], rate_hz=10)
    assert len(out) == 25 and out[:10].tolist() == [1.0] * 10 and out[10:20].tolist() == [0.0] * 10
    assert _assemble([], 22050).size == 0


def test_options_are_validated():
    with pytest.raises(ValueError, match="speed"):
        TranslateOptions(target_language="en", speed=-1).validate()
    with pytest.raises(ValueError, match="latency_mode"):
        TranslateOptions(target_language="en", latency_mode="fast").validate()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _text(kind: str, text: str) -> TextReceived:
    return TextReceived(kind, text, "en", 0.0, 1.0, 0.0, 0.0, Arrival(0.0, 0.0))


@pytest.mark.parametrize("tty", [True, False])
def test_live_text_partials_on_tty_only(tty):
    out, err = io.StringIO(), (_Tty() if tty else io.StringIO())
    display = cli._LiveText(out, err)
    for event in (_text("translation_partial", "he add"), _text("source_final", "il a"),
                  _text("translation_final", "He added"), _text("translation_partial", "that")):
        display(event)
    display.clear()
    assert out.getvalue() == "He added\n"
    assert ("he add" in err.getvalue() and err.getvalue().endswith("\r\x1b[K")) if tty else err.getvalue() == ""


def test_translate_reports_unreachable_server(tmp_path, capsys):
    code = cli.main(["translate", str(SAMPLE_FR), "--to", "en", "--server", "127.0.0.1:1", "-o",
                     str(tmp_path / "x.wav")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: UNAVAILABLE: ")


def test_serve_applies_flags_over_config_file(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_serve(config):
        seen["config"] = config
        return 0

    monkeypatch.setattr("relais.server.app.serve", fake_serve)
    path = tmp_path / "relais.yaml"
    path.write_text("server:\n  port: 6000\n  max_sessions: 3\n")
    assert cli.main(["serve", "--config", str(path), "--metrics-port", "0", "--models", str(tmp_path)]) == 0
    cfg = seen["config"]
    assert (cfg.server.port, cfg.server.metrics_port, cfg.server.max_sessions) == (6000, 0, 3)
    assert cfg.models.dir == str(tmp_path)
    assert '"max_sessions": 3' in capsys.readouterr().out
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "server.port: must be 0..65535" in capsys.readouterr().err


# --- end to end (real models, in-process server) -----------------------------------------------

@pytest.fixture()
def models_env(model_set, monkeypatch):
    monkeypatch.setenv("RELAIS_MODELS_DIR", str(model_set.root))


def test_translate_end_to_end(models_env, tmp_path, capsys):
    out_wav = tmp_path / "out.wav"
    code = cli.main(["translate", str(SAMPLE_FR), "--from", "fr", "--to", "en", "--speed", "0", "-o", str(out_wav)])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    audio, rate_hz = sf.read(str(out_wav), dtype="float32", always_2d=True)
    duration_s = len(audio) / rate_hz
    assert rate_hz == 22050 and audio.shape[1] == 1
    assert 2.0 < duration_s < 30.0
    assert float(np.sqrt(np.mean(audio ** 2))) > 0.01  # speech, not silence

    translation = out_wav.with_suffix(".txt").read_text().strip().lower()
    words = set(re.findall(r"[a-z]+", translation))
    hits = [w for w in ("added", "obligations", "development") if w in words]
    hits += [w for w in words if w.startswith("responsib") or w.startswith("capa")]
    assert len(hits) >= 2, f"translation {translation!r} shares too little with {REFERENCE_EN!r}"
    assert translation.split()[0] in captured.out.lower()  # finals were printed as they came

    document = out_wav.with_suffix(".vtt").read_text()
    assert document.startswith("WEBVTT")
    cues = parse_vtt(document)
    assert cues
    assert all(0.0 <= c.start_s < c.end_s <= duration_s + 0.002 for c in cues)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(cues, cues[1:]))
    assert all(len(c.text.split("\n")) <= 2 and max(len(line) for line in c.text.split("\n")) <= 42 for c in cues)
    assert "audio in" in captured.err and "RTF" in captured.err


def test_translate_bad_target_language_is_invalid_argument(models_env, tmp_path, capsys):
    code = cli.main(["translate", str(SAMPLE_FR), "--to", "xx", "--speed", "0", "-o", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: INVALID_ARGUMENT: target_language 'xx' is not supported" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()
