"""The streaming client, WebVTT subtitles and the `relais translate` / `relais serve` commands.

Subtitle, option and display tests need no models. The client plumbing (pacing,
receiving while sending, arrival stamps, audio assembly, concurrent streams) runs
against the real in-process server with the real engine on the prepared default
model set; `relais serve` runs as a real subprocess; the end-to-end tests run the
real `relais translate` CLI in-process.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from conftest import load_audio, load_manifest
from relais import cli
from relais.client import Arrival, TextReceived, TranslateClient, TranslateOptions, assemble_audio
from relais.console import LiveText
from relais.subtitles import (Cue, build_cues, format_timestamp, merge_spans, parse_timestamp, parse_vtt, render_vtt,
                              split_cue, wrap_lines)
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

SAMPLE_FR = Path(__file__).resolve().parent.parent / "service" / "relais" / "data" / "samples" / "fr_fleurs_1857.wav"
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


# --- client plumbing against the real in-process server ------------------------------------------

@pytest.fixture(scope="module")
def server_address(model_set):
    from relais.pipeline.engine import EngineConfig, TranslationEngine
    from relais.server.app import start_in_process
    from relais.server.config import load_config

    engine = TranslationEngine(EngineConfig(models_dir=model_set.root))
    config = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
    with start_in_process(config, engine=engine) as handle:
        yield handle.address


def _clip(utterance_id: str):
    utt = next(u for u in load_manifest("fr_en_dev") if u.id == utterance_id)
    return utt, load_audio(utt.path)


def test_client_receives_while_sending_and_assembles_audio(server_address):
    utt, audio = _clip("fleurs_fr_test_1857")  # 8.3 s, sent in real time in 100 ms chunks
    with TranslateClient(server_address) as client:
        result = client.translate_audio(audio, 16000, TranslateOptions(target_language="en", source_language="fr",
                                                                       speed=1.0))
    assert result.session is not None and result.session.task == "translate"
    assert result.output_sample_rate_hz == result.session.output_sample_rate_hz == 22050

    # responses came back while audio was still going out, stamped in arrival order
    texts = result.texts
    finals = [t for t in texts if t.kind == "translation_final"]
    assert finals and texts[0].arrival.sent_source_s < utt.duration_s - 1.0
    assert finals[0].arrival.sent_source_s < utt.duration_s
    assert result.audio_chunks[0].arrival.sent_source_s < utt.duration_s  # speech output began mid-stream
    stamped = [e.arrival for e in result.events if hasattr(e, "arrival")]
    assert [a.arrival_s for a in stamped] == sorted(a.arrival_s for a in stamped)
    assert [a.sent_source_s for a in stamped] == sorted(a.sent_source_s for a in stamped)
    assert result.timings.first_text_arrival_s == finals[0].arrival.arrival_s

    # paced: the 83 chunks went out over ~8.2 s of wall time, not as fast as possible
    assert result.timings.audio_in_s == pytest.approx(utt.duration_s, abs=0.01)
    assert utt.duration_s - 0.3 < result.timings.send_wall_s < utt.duration_s + 3.0
    assert result.timings.total_wall_s >= result.timings.send_wall_s

    # the assembled audio is the AudioOut chunks laid end to end
    chunks = result.audio_chunks
    assert chunks[0].output_start_s == 0.0
    assert all(b.output_start_s == pytest.approx(a.output_end_s, abs=1 / 22050) for a, b in zip(chunks, chunks[1:]))
    assert len(result.audio) == round(sum(c.duration_s for c in chunks) * 22050)
    assert result.audio_out_s == pytest.approx(result.summary.audio_out_s, abs=0.01)
    assert float(np.sqrt(np.mean(result.audio ** 2))) > 0.01  # speech, not silence

    assert result.summary.audio_in_s == pytest.approx(utt.duration_s, abs=0.01)
    assert result.translation == result.summary.translation and "added" in result.translation.lower()


def test_concurrent_streams_keep_their_own_results(server_address):
    """Two clients at once on one server: each gets the translation of its own clip."""
    clips = {"common_voice_fr_19601543": "value", "transpeech_fr_en_1": "building"}  # ref. words

    together = threading.Barrier(2)

    def run(utterance_id):
        utt, audio = _clip(utterance_id)
        with TranslateClient(server_address) as client:
            together.wait(30)
            started = time.monotonic()
            result = client.translate_audio(audio, 16000, TranslateOptions(
                target_language="en", source_language="fr", speed=0, return_audio=False))
            return utt, result, (started, time.monotonic())

    with futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run, clips))
    (_, _, (start_a, end_a)), (_, _, (start_b, end_b)) = runs
    assert start_a < end_b and start_b < end_a  # the two streams were open at the same time
    results = [(utt, result) for utt, result, _ in runs]
    for (utt, result), keyword in zip(results, clips.values()):
        assert result.summary.audio_in_s == pytest.approx(utt.duration_s, abs=0.01)
        # two streams at once queue for the model slot, so load shedding may decide on another grid
        # ("building" or "buildings"): match the word's stem, and never the other clip's
        words = set(re.findall(r"[a-z]+", result.translation.lower()))
        others = set(clips.values()) - {keyword}
        assert any(w.startswith(keyword) for w in words), (utt.id, result.translation)
        assert not any(w.startswith(o) for o in others for w in words), (utt.id, result.translation)
        assert not result.audio_chunks and result.audio.size == 0
    sessions = [result.session.session_id for _, result in results]
    assert len(set(sessions)) == 2


def test_assemble_places_chunks_by_output_position():
    out = assemble_audio([(0.0, np.ones(10, np.float32)), (2.0, np.full(5, 2.0, np.float32))], rate_hz=10)
    assert len(out) == 25 and out[:10].tolist() == [1.0] * 10 and out[10:20].tolist() == [0.0] * 10
    assert assemble_audio([], 22050).size == 0


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
    display = LiveText(out, err)
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


def test_serve_applies_flags_over_environment_over_config_file(tmp_path, model_set):
    """`relais serve` for real, in a subprocess: file < RELAIS_* environment < flags; then it serves and drains."""
    path = tmp_path / "relais.yaml"
    path.write_text("server:\n  port: 6000\n  metrics_port: 6001\n  max_sessions: 3\n  drain_grace_s: 5\n"
                    "runtime:\n  providers: [cpu]\n")
    env = {**os.environ, "RELAIS_SERVER_HOST": "127.0.0.1", "RELAIS_SERVER_MAX_SESSIONS": "2",
           "RELAIS_SERVER_PORT": "7000", "RELAIS_MODELS_DIR": str(tmp_path / "not-used")}
    proc = subprocess.Popen([sys.executable, "-m", "relais.cli", "serve", "--config", str(path), "--port", "0",
                             "--metrics-port", "0", "--models", str(model_set.root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=lambda s=stream: [lines.put(line) for line in s], daemon=True).start()
    seen, port = [], None
    try:
        deadline = time.monotonic() + 180
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if match := re.search(r"SERVING on port (\d+)", line):
                port = int(match.group(1))
        assert port is not None, "".join(seen)
        printed = next(line for line in seen if line.startswith("relais serve: "))
        effective = json.loads(printed.removeprefix("relais serve: "))
        server = {key: effective["server"][key] for key in ("host", "port", "metrics_port", "max_sessions",
                                                            "drain_grace_s")}
        # port: the flag beat the environment (7000) and the file (6000); metrics_port: the flag beat the file;
        # max_sessions: the environment beat the file; host: the environment beat the default
        assert server == {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "max_sessions": 2, "drain_grace_s": 5}
        assert effective["models"]["dir"] == str(model_set.root) and effective["runtime"]["providers"] == ["cpu"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # it listens where the flags said
            caps = pb_grpc.SpeechTranslatorStub(channel).ListCapabilities(pb.ListCapabilitiesRequest(), timeout=30)
        assert "fr" in caps.source_languages and caps.execution_provider == "cpu"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # drained cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_rejects_a_bad_flag_value(capsys):
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
    assert "mean lag" in captured.err and "computation-unaware" in captured.err  # --speed 0: not the queue


def test_translate_bad_target_language_is_invalid_argument(models_env, tmp_path, capsys):
    code = cli.main(["translate", str(SAMPLE_FR), "--to", "xx", "--speed", "0", "-o", str(tmp_path / "x.wav")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: INVALID_ARGUMENT: target_language 'xx' is not supported" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.wav").exists()


# --- pacing: each chunk leaves when its last sample exists --------------------------------------

def test_send_schedule_is_the_end_of_each_chunk():
    from relais.client.stream import send_schedule

    assert send_schedule([1600, 1600, 1600], 16000, 1.0) == pytest.approx([0.1, 0.2, 0.3])
    assert send_schedule([1600, 800], 16000, 1.0) == pytest.approx([0.1, 0.15])  # a short last chunk
    assert send_schedule([1600, 1600], 16000, 2.0) == pytest.approx([0.05, 0.1])
    assert send_schedule([1600, 1600], 16000, 0.0) == [0.0, 0.0]  # as fast as possible


class _EchoTranslator(pb_grpc.SpeechTranslatorServicer):
    """Answers every audio chunk at once with a partial text; records when each chunk arrived."""

    def __init__(self):
        self.arrivals: list[float] = []

    def Translate(self, request_iterator, context):
        received_s = 0.0
        for request in request_iterator:
            if request.WhichOneof("request") != "audio":
                continue
            self.arrivals.append(time.monotonic())
            received_s += len(request.audio.data) / 2 / 16000
            yield pb.TranslateResponse(text=pb.TextEvent(
                kind=pb.TextEvent.TRANSLATION_PARTIAL, text=f"chunk {len(self.arrivals) - 1}",
                source_span=pb.TimeSpan(start_s=0.0, end_s=received_s),
                emitted=pb.Emission(source_received_s=received_s)))


def test_realtime_pacing_sends_each_chunk_at_its_end_and_times_from_stream_start():
    """Against a real gRPC server: chunk i leaves at (i + 1) * 100 ms after stream time 0, never before, and
    arrival times count from stream time 0 (an answer to chunk i cannot arrive before (i + 1) * 100 ms)."""
    servicer = _EchoTranslator()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_SpeechTranslatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with TranslateClient(f"127.0.0.1:{port}") as client:
            result = client.translate_audio(np.zeros(16000, np.int16), 16000,
                                            TranslateOptions(target_language="en", speed=1.0, chunk_ms=100))
    finally:
        server.stop(None)
    sent = result.timings.chunks_sent
    assert [c.source_end_s for c in sent] == pytest.approx([0.1 * (i + 1) for i in range(10)])
    assert all(c.sent_s >= c.source_end_s - 0.002 for c in sent), sent  # never before its last sample exists
    assert all(c.sent_s < c.source_end_s + 0.15 for c in sent), sent  # and on time (loaded 2-core machine)
    assert result.timings.send_wall_s == pytest.approx(sent[-1].sent_s) and result.timings.send_wall_s >= 0.998
    # the server saw them paced 100 ms apart, not in a burst
    assert servicer.arrivals[-1] - servicer.arrivals[0] == pytest.approx(0.9, abs=0.12)
    partials = [t for t in result.texts if t.kind == "translation_partial"]
    assert len(partials) == 10
    for i, t in enumerate(partials):
        assert t.text == f"chunk {i}"
        assert t.arrival.arrival_s >= 0.1 * (i + 1) - 0.002 and t.arrival.sent_source_s >= 0.1 * (i + 1) - 1e-9
