"""Metrics that tell the truth while a stream is live: a real Prometheus scrapes a real `relais serve`.

A long-form French stream is sent in real time. After 60 s, before the stream ends, the
lag, per-utterance first-text/first-audio and compute series have observations on the
server's /metrics and in Prometheus's query API, and Prometheus's lag median agrees with
what the client measured (within a histogram bucket). The stream is then cancelled: its
observations stay. The exposition passes `promtool check metrics` (naming conventions).

Prometheus and promtool come from Debian's `prometheus` package (tools/install.sh --test);
without them this module skips, except under CI.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import load_audio, load_manifest, need_tool
from relais.client import TextReceived, TranslateClient, TranslateOptions
from relais.server.metrics import _LATENCY_BUCKETS_S
from serving import free_port, relais_serve

LIVE_S = 62.0  # query this long into the stream


def _binary(name: str) -> str:
    return need_tool(name, "prometheus")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def served(model_set, tmp_path_factory):
    with relais_serve(model_set.root, tmp_path_factory.mktemp("metrics-live")) as srv:
        yield srv


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory):
    exe = _binary("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: relais\n    static_configs: [{{targets: ['127.0.0.1:{served.metrics_port}']}}]\n")
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            try:
                if "Ready" in _get(url + "/-/ready"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready after 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _query(prometheus: str, expr: str) -> float | None:
    body = json.loads(_get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_live_series_before_the_stream_ends_and_after_a_cancel(served, prometheus):
    clips = load_manifest("fr_longform")
    audio = np.concatenate([load_audio(c.path) for c in clips])  # two monologues, ~2 minutes
    assert len(audio) / 16000 > LIVE_S + 10
    client_lags: list[float] = []
    outcome: dict[str, object] = {}
    client = TranslateClient(f"127.0.0.1:{served.port}")

    def on_event(event) -> None:
        if isinstance(event, TextReceived) and event.kind == "translation_final" and event.text.strip():
            client_lags.append(event.arrival.arrival_s - event.source_end_s)

    def run() -> None:
        try:
            client.translate_audio(audio, 16000, TranslateOptions(target_language="en", source_language="fr",
                                                                  speed=1.0), on_event)
            outcome["ended"] = "finished"
        except grpc.RpcError as exc:  # the channel closed under it: the client is gone
            outcome["ended"] = exc.code()

    metrics_url = f"http://127.0.0.1:{served.metrics_port}/metrics"
    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    time.sleep(max(0.0, LIVE_S - (time.monotonic() - started)))

    # --- mid-stream: the server's own exposition
    text = _get(metrics_url)
    live = _samples(text)
    assert _value(live, "relais_sessions_active") == 1
    assert _value(live, "relais_output_lag_seconds_count") >= 10
    assert _value(live, "relais_first_text_latency_seconds_count") >= 2  # one per utterance so far
    assert _value(live, "relais_first_audio_latency_seconds_count") >= 2
    for stage in ("vad", "encoder", "decoder", "tts"):
        assert _value(live, "relais_compute_seconds_total", stage=stage) > 0, stage
    assert ("relais_speech_backlog_max_seconds", ()) in live and ("relais_stream_lag_max_seconds", ()) in live
    done = subprocess.run([_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
    assert "_created" not in text

    # --- mid-stream: the same in Prometheus, and it agrees with the client
    time.sleep(2.5)  # at least one more scrape
    assert not outcome, "the stream ended before the mid-stream checks"
    assert (_query(prometheus, "relais_output_lag_seconds_count") or 0) >= 10
    assert (_query(prometheus, "relais_first_text_latency_seconds_count") or 0) >= 2
    assert (_query(prometheus, 'sum(rate(relais_compute_seconds_total[30s]))') or 0) > 0
    server_p50 = _query(prometheus, "histogram_quantile(0.5, sum by (le) (relais_output_lag_seconds_bucket))")
    client_p50 = float(np.median(client_lags))
    upper = next(b for b in _LATENCY_BUCKETS_S if b >= client_p50)
    lower = max([0.0] + [b for b in _LATENCY_BUCKETS_S if b < client_p50])
    # within the client's bucket, give or take one 100 ms chunk of send timing
    assert lower - 0.1 <= server_p50 <= upper + 0.1, (server_p50, client_p50, len(client_lags))

    # --- cancel: the stream's observations stay, and it is counted as cancelled
    before = _value(live, "relais_output_lag_seconds_count")
    client.close()  # cancels the call, whether or not a response is due
    thread.join(30)
    assert outcome.get("ended") == grpc.StatusCode.CANCELLED
    deadline = time.monotonic() + 10
    while _value(_samples(_get(metrics_url)), "relais_sessions_active") != 0:
        assert time.monotonic() < deadline, "the cancelled session was not freed"
        time.sleep(0.1)
    after = _samples(_get(metrics_url))
    assert _value(after, "relais_output_lag_seconds_count") >= before
    assert _value(after, "relais_sessions_total", outcome="cancelled") == 1
