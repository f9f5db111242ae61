"""tools/asr_listener.py: the eval's ASR hearing real English speech and a run's saved speech,
greedy and with a beam search."""

import importlib.util
import json
import sys
from pathlib import Path

from conftest import load_manifest

from relais.eval.asr import write_speech
from relais.runtime.tts import PiperTts

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))  # the tool imports bench_phrasing from its own folder
spec = importlib.util.spec_from_file_location("asr_listener", TOOLS / "asr_listener.py")
listener = importlib.util.module_from_spec(spec)
spec.loader.exec_module(listener)

REFERENCE = "The building is heated with the help of solar panels."


def _rows(printed: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in printed.splitlines()
            if line.startswith("| ") and not line.startswith("| listener") and not line.startswith("| speech")]


def test_the_listener_hears_real_speech_and_a_runs_saved_speech(tmp_path, model_set, capsys):
    """On a real English recording the beam search hears every word ("...think about them as
    dinosaurs because...") where greedy decoding hears "about the mess diners, or it's because"; a run's saved
    streamed speech that says its reference scores far above its offline speech that says something
    else, and each row reports ASR-BLEU against the BLEU of the text that was spoken."""
    voice = PiperTts(model_set.path(model_set.by_task("tts")[0].name))
    clip = min(load_manifest("en_asr"), key=lambda u: u.duration_s)
    manifest = tmp_path / "en.tsv"
    manifest.write_text(f"id\tpath\tduration_s\ttranscript_en\n{clip.id}\t{clip.path}\t{clip.duration_s}\t"
                        f"{clip.source_text}\n")
    run = tmp_path / "run"
    wrong = "Nobody came to the market on Sunday."
    results = {"meta": {"machine": "this one"},
               "utterances": [{"id": "u", "reference": REFERENCE, "translation": REFERENCE}],
               "offline": {"utterances": [{"id": "u", "reference": REFERENCE, "translation": wrong}]}}
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    write_speech(run / "audio", "u.wav", voice.synthesize(REFERENCE), voice.sample_rate_hz)
    write_speech(run / "audio", "u.offline.wav", voice.synthesize(wrong), voice.sample_rate_hz)

    assert listener.main(["--run", str(run), "--wer-manifest", str(manifest), "--models", str(model_set.root),
                          "--beam", "1", "--beam", "3"]) == 0
    rows = _rows(capsys.readouterr().out)
    wers = [r for r in rows if len(r) == 5]
    assert [r[0] for r in wers] == ["greedy", "beam 3"]
    (_, greedy_wer, *_), (_, beam_wer, *_) = wers
    assert float(beam_wer) == 0.0 and 0 < float(greedy_wer) < 0.5, wers
    heard = {(r[0], r[1]): r for r in rows if len(r) == 6}
    for decoding in ("greedy", "beam 3"):
        streamed, offline = heard["streamed", decoding], heard["offline", decoding]
        assert float(streamed[3]) == 100.0 and float(streamed[4]) > 60, streamed  # heard as written
        assert float(offline[3]) < 20 and float(offline[4]) < 20, offline  # another sentence, heard as such


def test_a_run_without_saved_speech_is_refused_with_a_reason(tmp_path, model_set):
    (tmp_path / "results.json").write_text(json.dumps({"meta": {}, "utterances": [
        {"id": "u", "reference": REFERENCE, "translation": REFERENCE}]}))
    try:
        listener.main(["--run", str(tmp_path), "--wer-manifest", "none", "--models", str(model_set.root),
                       "--beam", "1"])
    except SystemExit as exc:
        assert "no saved speech (run relais eval with --save-audio)" in str(exc)
    else:
        raise AssertionError("a run without audio/ was scored")
