"""`relais eval` end to end: the real in-process server on the real default models, two short clips."""

import json
import time

import soundfile

from conftest import eval_dir, load_manifest

from relais.cli import main


def test_relais_eval_simulated_on_two_short_clips(model_set, tmp_path, capsys):
    clips = sorted(load_manifest("fr_en_dev"), key=lambda u: u.duration_s)[:2]
    manifest = tmp_path / "two.tsv"
    manifest.write_text("id\tpath\tduration_s\tsource_text_fr\treference_en\n" + "".join(
        f"{u.id}\t{u.path}\t{u.duration_s}\t{u.source_text}\t{u.reference}\n" for u in clips))
    out = tmp_path / "out"
    started = time.monotonic()
    rc = main(["eval", "--manifest", str(manifest), "--models", str(model_set.root), "--mode", "simulated",
               "--save-audio", "--out", str(out)])
    elapsed_s = time.monotonic() - started
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| streamed |" in printed and "| offline (same models) |" in printed

    results = json.loads((out / "results.json").read_text())
    s = results["summary"]
    assert s["n_utterances"] == 2 and s["n_failed"] == 0
    for key in ("bleu", "asr_bleu", "chrf", "start_offset_s", "end_offset_s", "al_s", "laal_s", "first_text_s",
                "rtf", "lag_p50_s", "lag_p95_s"):
        assert s[key] is not None, key
    assert s["chrf"] > 20
    assert "source_wer" in s  # None here: the translate task streams no source transcript
    # simulated = computation-unaware: delays are source seconds read, so they cannot pass the source end
    for u in results["utterances"]:
        assert u["translation"].strip() and u["asr_text"].strip()
        assert 0 < u["first_text_s"] <= u["duration_s"] + 1e-6
        assert u["start_offset_s"] <= u["duration_s"] + 1e-6
        assert u["end_offset_s"] > 0  # the speech outlasts the source
    assert results["offline"]["summary"]["n_utterances"] == 2 and results["offline"]["summary"]["bleu"] is not None
    assert "whisper-base" in results["meta"]["asr_model"] and "beam search of 5" in results["meta"]["asr_model"]
    # --save-audio: the speech each stream received, and the offline baseline's, as WAV files
    offline = {r["id"]: r for r in results["offline"]["utterances"]}
    for u in results["utterances"]:
        streamed, rate = soundfile.read(out / "audio" / f"{u['id']}.wav", dtype="float32")
        assert abs(len(streamed) / rate - u["audio_out_s"]) < 0.01 and float(abs(streamed).max()) > 0.1
        spoken, rate = soundfile.read(out / "audio" / f"{u['id']}.offline.wav", dtype="float32")
        assert abs(len(spoken) / rate - offline[u["id"]]["audio_out_s"]) < 0.01
    prom = {r["name"]: r for r in results["prometheus_vs_client"]}
    assert prom["first_audio"]["server_count"] == 2 and prom["first_audio"]["client_count"] == 2
    assert abs(prom["first_audio"]["mean_difference_s"]) < 0.5  # transport only, on one machine
    assert (out / "results.md").is_file() and (out / "latency_per_utterance.png").stat().st_size > 1000
    assert eval_dir().is_dir() and elapsed_s < 120


def test_relais_eval_stops_at_a_request_the_server_refuses_as_invalid(model_set, tmp_path, capsys):
    """fr -> fr speech: no voice speaks French. The server refuses the first stream with INVALID_ARGUMENT;
    the eval says so once, with the server's message and the options it sent, exits 2, and writes no
    results (instead of a table of twelve identical failures)."""
    out = tmp_path / "out"
    manifest = eval_dir() / "fr_en_dev" / "manifest.tsv"
    rc = main(["eval", "--manifest", str(manifest), "--models", str(model_set.root), "--mode", "simulated",
               "--to", "fr", "--no-asr", "--no-offline", "--concurrency", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "refused the streams as invalid (INVALID_ARGUMENT)" in err and "no voice speaks 'fr'" in err
    assert "--to fr" in err and not out.exists()


def test_relais_eval_sweep_prints_each_level_as_it_ends(model_set, tmp_path, capsys):
    """A concurrency sweep prints each level's line when that level ends, so a sweep cut short
    (a time limit on a leased GPU) keeps the levels it finished; the report has the same figures."""
    clips = sorted(load_manifest("fr_en_dev"), key=lambda u: u.duration_s)[:2]
    manifest = tmp_path / "two.tsv"
    manifest.write_text("id\tpath\tduration_s\n" + "".join(f"{u.id}\t{u.path}\t{u.duration_s}\n" for u in clips))
    out = tmp_path / "out"
    rc = main(["eval", "--manifest", str(manifest), "--models", str(model_set.root), "--mode", "simulated",
               "--concurrency", "1,2", "--no-asr", "--no-offline", "--out", str(out)])
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("x")]
    assert [line.split(":")[0] for line in lines] == ["x1", "x2"], lines
    levels = json.loads((out / "results.json").read_text())["concurrency"]
    for line, level in zip(lines, levels):
        assert f"{level['n_utterances']} streams ran, {level['n_failed']} failed or refused" in line
        assert f"p95 {level['lag_p95_s']:.2f} s" in line and f"RTF {level['rtf']:.2f}" in line


def test_relais_eval_offline_baseline_with_beam_search(model_set, tmp_path, capsys):
    """--offline-beam N decodes the baseline as the latency modes' final decodes do (beam search);
    the report names it, and a width outside 1..16 is refused before anything runs."""
    clip = min(load_manifest("fr_en_dev"), key=lambda u: u.duration_s)
    manifest = tmp_path / "one.tsv"
    manifest.write_text("id\tpath\tduration_s\tsource_text_fr\treference_en\n"
                        f"{clip.id}\t{clip.path}\t{clip.duration_s}\t{clip.source_text}\t{clip.reference}\n")
    out = tmp_path / "out"
    rc = main(["eval", "--manifest", str(manifest), "--models", str(model_set.root), "--mode", "simulated",
               "--no-asr", "--offline-beam", "3", "--out", str(out)])
    assert rc == 0
    assert "| offline (same models, beam 3) |" in capsys.readouterr().out
    offline = json.loads((out / "results.json").read_text())["offline"]
    assert offline["beam_size"] == 3 and "beam search of 3" in offline["what"]
    assert offline["summary"]["chrf"] > 20  # a translation of the clip, not noise
    rc = main(["eval", "--manifest", str(manifest), "--offline-beam", "0", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--offline-beam must be within 1..16" in capsys.readouterr().err
    rc = main(["eval", "--manifest", str(manifest), "--asr-beam", "17", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--asr-beam must be within 1..16" in capsys.readouterr().err
    rc = main(["eval", "--manifest", str(manifest), "--asr-beam", "3", "--no-asr", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "which --no-asr skips" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
