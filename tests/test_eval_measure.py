"""Per-utterance figures from a client result (both clocks), the output-lag send-time rule,
Prometheus histogram arithmetic, and the summary's keys."""

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from relais.client import Arrival, AudioReceived, ClientResult, ClientTimings, ServerSummary, TextReceived
from relais.client.results import ChunkSent
from relais.eval.measure import measure, send_wall_s
from relais.eval.prometheus import compare, parse_histograms
from relais.eval.results import summarise


def _text(text, end_s, arrival_s, received_s, kind="translation_final"):
    return TextReceived(kind, text, "en", 0.0, end_s, arrival_s - 0.01, received_s, Arrival(arrival_s, arrival_s))


def _audio(duration_s, arrival_s, received_s, emitted_wall_s):
    return AudioReceived("x", 22050, 0.0, duration_s, 0.0, 1.0, emitted_wall_s, received_s, Arrival(arrival_s, 0.0))


def _result():
    r = ClientResult()
    r.events = [_text("hello there", 1.0, 1.5, 1.2), _text("", 1.5, 1.6, 1.5),
                _text("world", 1.95, 2.6, 2.0), _audio(1.0, 1.8, 1.2, 1.75), _audio(0.5, 3.5, 2.0, 3.45)]
    r.summary = ServerSummary(2.0, 1.5, 1.0, 1.25, 0.6, 0.7, 0.4, "fr", "hello there world", "bonjour le monde")
    r.timings = ClientTimings(audio_in_s=2.0, send_wall_s=1.9, total_wall_s=3.6)
    return r


def test_send_wall_is_the_send_time_of_the_chunk_holding_the_span_end():
    # a chunk leaves when its last sample exists: [0.9, 1.0) at 1.0
    assert send_wall_s(1.0, 2.0, 100) == pytest.approx(1.0)
    assert send_wall_s(1.05, 2.0, 100) == pytest.approx(1.1)
    assert send_wall_s(5.0, 2.0, 100) == pytest.approx(2.0)  # clamped to the last chunk
    assert send_wall_s(0.0, 2.0, 100) == pytest.approx(0.1)
    assert send_wall_s(1.97, 1.95, 100) == pytest.approx(1.95)  # a short last chunk leaves at the source end


def test_realtime_uses_client_arrival_times():
    f = measure(_result(), "u", 2.0, "realtime", reference="hello there my world")
    assert f.first_text_s == 1.5
    assert (f.hyp_words, f.ref_words) == (3, 4)
    # words at 1.5, 1.5, 2.6 over 2 s; LAAL with max(3, 4) words: rate 0.5; tau = 3
    assert f.laal_s == pytest.approx(((1.5 - 0) + (1.5 - 0.5) + (2.6 - 1.0)) / 3)
    # speech: 1.8-2.8, then emitted at 3.5 -> gap 0.7, ends 4.0 -> EndOffset 2.0
    assert f.start_offset_s == 1.8 and f.end_offset_s == pytest.approx(2.0)
    assert (f.discontinuities, f.discontinuity_s) == (1, pytest.approx(0.7))
    # lags (non-empty finals only), from the scheduled sends of chunks ending 1.0 and 2.0: 1.5 - 1.0, 2.6 - 2.0
    assert [p.lag_s for p in f.lags] == pytest.approx([0.5, 0.6])
    assert f.lag_slope is None  # two points over 1 s: no drift estimate
    assert f.rtf == 0.4 and f.client_wall_rtf == pytest.approx(1.8)
    # onset on the server clock: 1.75 - 1.25 = 0.5, i.e. 0.6 on the client clock (the server's starts when
    # the first chunk arrives, scheduled at 0.1); first audio arrived at 1.8 -> 1.2 from onset
    assert f.client_first_audio_from_onset_s == pytest.approx(1.2)


def test_realtime_lag_uses_the_recorded_send_times_when_there_are_some():
    r = _result()
    # chunks of 0.5 s that left late (jitter): the span ending 1.0 left at 1.2, the one ending 1.95 at 2.05
    r.timings.chunks_sent = [ChunkSent(0.5, 0.55), ChunkSent(1.0, 1.2), ChunkSent(1.5, 1.6), ChunkSent(2.0, 2.05)]
    f = measure(r, "u", 2.0, "realtime", chunk_ms=500)
    assert [p.lag_s for p in f.lags] == pytest.approx([1.5 - 1.2, 2.6 - 2.05])
    assert f.client_first_audio_from_onset_s == pytest.approx(1.8 - (0.5 + 0.55))
    assert f.timeline.chunk_sent_s == [0.55, 1.2, 1.6, 2.05]


def test_timeline_keeps_every_response_in_arrival_order():
    r = _result()
    r.events.insert(0, _text("hel", 0.5, 0.7, 0.6, kind="translation_partial"))
    events = measure(r, "u", 2.0, "realtime").timeline.events
    assert [e.kind for e in events] == ["translation_partial", "translation_final", "translation_final",
                                        "translation_final", "audio", "audio"]
    partial, audio = events[0], events[4]
    assert (partial.text, partial.arrival_s, partial.source_received_s, partial.duration_s) == ("hel", 0.7, 0.6, None)
    assert (audio.arrival_s, audio.source_received_s, audio.duration_s, audio.emitted_wall_s) == (1.8, 1.2, 1.0, 1.75)
    assert events[2].text == ""  # an empty final is kept as received


def test_simulated_uses_server_source_stamps():
    f = measure(_result(), "u", 2.0, "simulated", reference="hello there my world")
    assert f.first_text_s == 1.2
    assert f.start_offset_s == 1.2 and f.end_offset_s == pytest.approx(0.7)  # 1.2-2.2, then 2.2-2.7; - 2.0
    assert [p.lag_s for p in f.lags] == pytest.approx([0.2, 0.05])  # source read past the span end


def test_summary_has_the_documented_keys():
    f = measure(_result(), "u", 2.0, "realtime", reference="Hello there, world!")
    f.translation = f.asr_text = "hello there world"  # punctuation and case are normalised away
    s = summarise([f]).to_dict()  # the keys of results.json's summary
    for key in ("bleu", "asr_bleu", "chrf", "start_offset_s", "end_offset_s", "al_s", "laal_s", "first_text_s",
                "rtf", "lag_p50_s", "lag_p95_s", "n_utterances"):
        assert key in s and s[key] is not None, key
    assert s["chrf"] == pytest.approx(100.0) and s["asr_chrf"] == pytest.approx(100.0)


def test_prometheus_histogram_delta_mean_and_quantile():
    reg = CollectorRegistry()
    h = Histogram("relais_output_lag_seconds", "lag", buckets=(0.5, 1.0, 2.0), registry=reg)
    h.observe(5.0)  # before the run
    before = generate_latest(reg).decode()
    for v in (0.2, 0.6, 0.8, 1.5):
        h.observe(v)
    after = generate_latest(reg).decode()
    hist = parse_histograms(after)["relais_output_lag_seconds"].minus(parse_histograms(before)["relais_output_lag_seconds"])
    assert hist.count == 4 and hist.mean == pytest.approx(3.1 / 4)
    assert hist.quantile(0.5) == pytest.approx(0.5 + 0.5 * (2 - 1) / 2)  # 2nd of 4 in (0.5, 1.0], 2 there
    rows = compare(before, after, output_lag_s=[0.25, 0.65, 0.85, 1.55])
    lag = next(r for r in rows if r.name == "output_lag")
    assert lag.mean_difference_s == pytest.approx(0.05)


def test_results_write_every_section(tmp_path):
    """results.json keeps its shape (what docs/benchmarks/*/results.json hold); markdown and plots read the same."""
    import json
    from pathlib import Path

    from relais.eval.report import markdown, write
    from relais.eval.results import (ConcurrencyLevel, EvalResults, MemorySample, OfflineResults, OfflineRow,
                                     OfflineSummary, Quality, RunMeta, max_concurrency_under, memory_summary,
                                     speech_vs_text, streamed_vs_offline)

    f = measure(_result(), "u", 2.0, "realtime", reference="hello there my world")
    assert speech_vs_text([f]) is None  # no ASR ran
    f.asr_text = "hello there world"  # the ASR heard the translation as it was written
    levels = [ConcurrencyLevel(1, 1, 0, 0.5, 0.7, 0.4, 1.8, 1.8, 4.0, 12.5, 0.0, 12.5),
              ConcurrencyLevel(2, 1, 0, 0.9, 3.5, 0.4, 2.0, 2.0, 5.0, 11.9, 0.25, 12.5, refusals=3)]
    meta = RunMeta("m.tsv", "2026-01-01T00:00:00", "cpu", "in-process", "realtime", "balanced", "fr", "en", 100,
                   False, None, "RSS", "norm", asr_model="whisper-base (fp32)")
    offline = OfflineResults(OfflineSummary(1, 0.2, Quality(1, 10.0, 40.0)),
                             [OfflineRow("u", "hello world", "", "hello there my world", 1.5)], "whole utterance")
    results = EvalResults(meta, summarise([f]), [f], {"v": "RpcError: boom"},
                          memory_summary([MemorySample(0.0, 400 * 2**20), MemorySample(60.0, 460 * 2**20)]),
                          compare(None, None), offline, levels, 3.0, max_concurrency_under(levels, 3.0),
                          streamed_vs_offline([f], offline), speech_vs_text([f]))
    write(results, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    reference = json.loads((docs / "eval-fr_en_dev-realtime" / "results.json").read_text())
    # the recorded runs' keys are all still there; new ones are additions
    assert set(data) - set(reference) <= {"bleu_streamed_minus_offline", "asr_bleu_minus_bleu"}
    assert set(data) >= set(reference)
    assert set(data["summary"]) >= set(reference["summary"]) - {"asr_chrf"} and data["summary"]["concurrency"] == 1
    assert set(data["utterances"][0]) - set(reference["utterances"][0]) == {"timeline", "degraded_fraction"}
    assert set(data["utterances"][0]) >= set(reference["utterances"][0])
    timeline = data["utterances"][0]["timeline"]
    assert len(timeline["events"]) == 5 and timeline["events"][3]["kind"] == "audio"
    assert timeline["events"][3]["duration_s"] == 1.0 and timeline["events"][0]["text"] == "hello there"
    assert data["meta"]["latency_overrides"] == {}
    diff = data["bleu_streamed_minus_offline"]
    assert diff["n_utterances"] == 1 and diff["n_resamples"] == 1000 and diff["bleu_b"] == pytest.approx(0.0)
    assert diff["difference"] == pytest.approx(diff["bleu_a"]) and "excludes_zero" in diff
    assert set(data["offline"]) - set(reference["offline"]) == {"beam_size"}  # newer than the stored run
    assert set(data["offline"]) >= set(reference["offline"]) and data["offline"]["summary"]["bleu"] == 10.0
    assert set(data["concurrency"][0]) - set(reference["concurrency"][0]) == {
        "bleu", "degraded_fraction", "bleu_single", "decoder_batch_mean", "refusals"}
    assert set(data["concurrency"][0]) >= set(reference["concurrency"][0]) and data["max_concurrency_under_bound"] == 1
    assert data["memory"]["samples"] == [[0.0, 400.0], [60.0, 460.0]] and data["memory"]["rss_slope_mb_per_min"] == 60
    text = markdown(results)
    assert "| 2 | 0.90 | 3.50 | 11.9 (12.5) | 0.25 |" in text  # N, lag p50/p95, BLEU (at N=1), skipped
    assert "| 0 (3 refusals retried) |" in text and "| 0 |" in text  # N=2 retried refused streams, N=1 did not
    assert "| streamed |" in text and "| offline (same models) | 10.0 |" in text and "largest N within it: **1**" in text
    assert "BLEU streamed − offline: " in text and "paired bootstrap, 1000 resamples of 1 utterances" in text
    assert "latency balanced ·" in text
    speech = data["asr_bleu_minus_bleu"]
    assert speech["difference"] == 0 and not speech["excludes_zero"] and speech["n_utterances"] == 1
    assert "ASR-BLEU − BLEU (streamed speech vs its text): +0.0" in text
    assert "400 -> 460 MB" in text
    assert {p.name for p in tmp_path.glob("*.png")} == {"latency_per_utterance.png", "memory_over_time.png",
                                                        "lag_vs_concurrency.png"}


def test_speech_vs_text_scores_what_the_asr_heard_against_the_text():
    """ASR-BLEU − BLEU is paired per utterance: speech that loses words on every clip is a significant loss."""
    from dataclasses import replace

    from relais.eval.results import speech_vs_text

    base = measure(_result(), "u", 2.0, "realtime", reference="x")
    sentences = ["the building is heated with the help of solar panels",
                 "he also described certain species of plants in the valley",
                 "the castle belongs to the noble family of the town",
                 "it indicates the value of the slope of the road"]
    figs = []
    for i, ref in enumerate(sentences):
        words = ref.split()
        heard = " ".join(words[:3] + ["uh"] + words[4:])  # the ASR mishears the fourth word of each
        figs.append(replace(base, id=f"u{i}", reference=ref, translation=ref, asr_text=heard))
    d = speech_vs_text(figs)
    assert d.bleu_b == pytest.approx(100.0) and d.bleu_a < 70 and d.ci_high < 0 and d.excludes_zero
    assert d.n_utterances == 4


def test_labelled_mean_is_the_mean_of_one_labelled_series_between_two_scrapes():
    """The concurrency sweep's streams per decoder call: (sum, count) deltas of relais_batch_size{stage="decoder"},
    other labels ignored, None when nothing was observed in between."""
    from relais.eval.prometheus import labelled_mean
    from relais.server.metrics import RelaisMetrics

    metrics = RelaisMetrics()
    metrics.observe_batch("decoder", 1)
    before = metrics.exposition().decode()
    for size in (3, 2, 4):
        metrics.observe_batch("decoder", size)
    metrics.observe_batch("tts", 8)  # another stage: not counted
    after = metrics.exposition().decode()
    assert labelled_mean(before, after, "relais_batch_size", stage="decoder") == 3.0
    assert labelled_mean(None, before, "relais_batch_size", stage="decoder") == 1.0
    assert labelled_mean(after, after, "relais_batch_size", stage="decoder") is None
