"""Prometheus metrics of one server (its own registry, so tests can run several servers).

Names follow docs/DESIGN and Prometheus' conventions: prefix ``relais_``, base units
in names, ``_total`` on counters (checked by ``promtool check metrics`` in the tests).
Served over HTTP on ``server.metrics_port`` by prometheus_client (0 picks a free
port; ``port`` says which).

Everything is observed while streams run, never only when they end: latencies as
each stream's report learns them (``LatencySink``), compute per model call (a counter
by stage: ``rate()`` gives live utilisation and, over the audio-in rate, the RTF),
and, at scrape time, the worst lag, speech backlog and time-without-commit among the
live streams. Labels take only few values (stage, outcome, direction, code,
provider): never a session.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               enable_created_metrics, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from relais.server.report import StreamReport, StreamSummary

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "cancelled", "client_error", "error", "rejected")
STAGES = ("vad", "encoder", "language", "decoder", "tts")
DIRECTIONS = ("in", "out")

_STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
_LOAD_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RelaisMetrics:
    """Every metric the server exports, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None, created_series: bool = False):
        # The *_created sample series double the series count for little use; off unless asked for.
        (enable_created_metrics if created_series else disable_created_metrics)()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.live = LiveStreams(r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds
        self.sessions_active = Gauge("relais_sessions_active", "Translate streams in progress", registry=r)
        self.sessions_total = Counter(
            "relais_sessions_total", "Translate streams by outcome: ok, cancelled (client left), client_error "
            "(bad config or audio, idle, over a limit or quota), error (the server's fault), rejected (busy, "
            "warming, draining)", ["outcome"], registry=r)
        self.stage_latency_seconds = Histogram("relais_stage_latency_seconds", "Duration of one model call",
                                               ["stage"], buckets=_STAGE_BUCKETS_S, registry=r)
        self.scheduler_wait_seconds = Histogram(
            "relais_scheduler_wait_seconds", "Time a model call queued for a free slot in the model scheduler",
            ["stage"], buckets=_STAGE_BUCKETS_S, registry=r)
        self.token_calls_total = Counter(  # auth.tokens_file set: by token NAME, never the token
            "relais_token_calls_total", "Authenticated calls by token name", ["token"], registry=r)
        self.token_audio_seconds_total = Counter(  # by token NAME: what audio_minutes_per_day counts
            "relais_token_audio_seconds_total", "Source audio received, by token name", ["token"], registry=r)
        self.token_streams_active = Gauge("relais_token_streams_active", "Streaming calls open, by token name",
                                          ["token"], registry=r)
        self.serving = Gauge("relais_serving", "1 while the server takes new streams (models warm, not draining)",
                             registry=r)
        self.batch_size = Histogram(
            "relais_batch_size", "Streams served by one batched model call (load.max_batch)", ["stage"],
            buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64), registry=r)
        self.compute_seconds_total = Counter(
            "relais_compute_seconds_total", "Model compute seconds by stage, counted as each call ends",
            ["stage"], registry=r)
        self.first_audio_latency_seconds = Histogram(
            "relais_first_audio_latency_seconds", "Per utterance: wall seconds from the arrival of its speech "
            "onset to its first translated audio, observed when that audio is sent",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.first_text_latency_seconds = Histogram(
            "relais_first_text_latency_seconds", "Per utterance: wall seconds from the arrival of its speech "
            "onset to its first committed text, observed when that text is sent",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.output_lag_seconds = Histogram(
            "relais_output_lag_seconds", "Per committed text: wall seconds from the arrival of the end of its "
            "source span to its sending, observed when it is sent", buckets=_LATENCY_BUCKETS_S, registry=r)
        self.scheduler_utilisation = Gauge(
            "relais_scheduler_utilisation", "Share of the model scheduler's slot time spent computing over "
            "the last 10 s (what admission by load reads; 1 = saturated)", registry=r)
        self.decision_steps_total = Counter(
            "relais_decision_steps_total", "Hypothesis steps of the streams' latency modes: run, or skipped by "
            "load shedding (the server was loaded)", ["outcome"], registry=r)
        self.stream_degraded_fraction = Histogram(
            "relais_stream_degraded_fraction", "Per stream: share of its latency mode's hypothesis steps "
            "skipped under load", buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.67), registry=r)
        self.real_time_factor = Histogram("relais_real_time_factor", "Compute seconds per source second, per stream",
                                          buckets=_RTF_BUCKETS, registry=r)
        self.audio_seconds_total = Counter("relais_audio_seconds_total", "Audio seconds received (in) and spoken (out)",
                                           ["direction"], registry=r)
        self.errors_total = Counter("relais_errors_total", "RPCs that ended with an error, by gRPC status code",
                                    ["code"], registry=r)
        self.heap_trim_seconds = Histogram(
            "relais_heap_trim_seconds", "Duration of one give-back of the C heap's free pages to the OS "
            "(runtime.heap_trim_s)", buckets=_STAGE_BUCKETS_S, registry=r)
        self.model_load_seconds = Gauge("relais_model_load_seconds", "Seconds spent loading and warming the models",
                                        registry=r)
        self.execution_provider_info = Gauge("relais_execution_provider_info",
                                             "The ONNX Runtime execution provider in use (value 1)",
                                             ["provider"], registry=r)
        for outcome in OUTCOMES:
            self.sessions_total.labels(outcome=outcome)
        for outcome in ("run", "skipped"):
            self.decision_steps_total.labels(outcome=outcome)
        for stage in STAGES:
            self.compute_seconds_total.labels(stage=stage)
        for direction in DIRECTIONS:
            self.audio_seconds_total.labels(direction=direction)
        self.batch_size.labels(stage="decoder")  # the one batched stage: shown from the start
        self._http = None
        self._http_thread: threading.Thread | None = None

    # --- recording ------------------------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float) -> None:
        """The model scheduler's observer: called from worker threads (prometheus_client is thread-safe)."""
        self.stage_latency_seconds.labels(stage=stage).observe(seconds)
        self.compute_seconds_total.labels(stage=stage).inc(seconds)

    def observe_batch(self, stage: str, size: int) -> None:
        self.batch_size.labels(stage=stage).observe(size)

    def observe_scheduler_wait(self, stage: str, seconds: float) -> None:
        self.scheduler_wait_seconds.labels(stage=stage).observe(seconds)

    # LatencySink: each stream's report calls these the moment it knows a latency.
    def observe_output_lag(self, seconds: float) -> None:
        self.output_lag_seconds.observe(seconds)

    def observe_first_text(self, seconds: float) -> None:
        self.first_text_latency_seconds.observe(seconds)

    def observe_first_audio(self, seconds: float) -> None:
        self.first_audio_latency_seconds.observe(seconds)

    def record_stream(self, summary: StreamSummary) -> None:
        """What only a whole stream has: its real-time factor (its latencies were observed live)."""
        if summary.audio_in_s > 0:
            self.real_time_factor.observe(summary.real_time_factor)
            self.stream_degraded_fraction.observe(summary.degraded_fraction)

    def observe_steps(self, run: int, skipped: float) -> None:
        """Hypothesis steps of one session call (LatencySink)."""
        if run:
            self.decision_steps_total.labels(outcome="run").inc(run)
        if skipped:
            self.decision_steps_total.labels(outcome="skipped").inc(skipped)

    def watch_scheduler(self, scheduler) -> None:
        """Read the model scheduler's utilisation at each scrape."""
        self.scheduler_utilisation.set_function(scheduler.utilisation)

    def set_execution_provider(self, provider: str) -> None:
        self.execution_provider_info.clear()
        self.execution_provider_info.labels(provider=provider).set(1)

    def exposition(self) -> bytes:
        """The text format a scrape returns."""
        return generate_latest(self.registry)

    # --- HTTP endpoint --------------------------------------------------------------------------

    def start_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; return the bound port."""
        if self._http is not None:
            return self.port
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    @property
    def port(self) -> int | None:
        return self._http.server_address[1] if self._http is not None else None

    def stop_http(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
        self._http = self._http_thread = None


class LiveStreams(Collector):
    """The live streams' reports, summarised at scrape time (worst values, no per-session labels)."""

    def __init__(self, registry: CollectorRegistry):
        self._reports: set[StreamReport] = set()
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, report: StreamReport) -> None:
        with self._lock:
            self._reports.add(report)

    def discard(self, report: StreamReport) -> None:
        with self._lock:
            self._reports.discard(report)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        with self._lock:
            reports = list(self._reports)
        lag = [r.lag_s(now) for r in reports]
        backlog = [r.backlog_s(now) for r in reports]
        uncommitted = [r.uncommitted_s(now) for r in reports]
        yield GaugeMetricFamily("relais_stream_lag_max_seconds", "Largest, among live streams, wait of source "
                                "audio that arrived and that the stream has not finished with (0: all caught up)",
                                value=max(lag, default=0.0))
        yield GaugeMetricFamily("relais_speech_backlog_max_seconds", "Largest, among live streams, translated "
                                "speech sent but not yet playable on the listener's timeline",
                                value=max(backlog, default=0.0))
        yield GaugeMetricFamily("relais_speech_backlog_seconds", "Translated speech sent but not yet playable, "
                                "summed over live streams", value=sum(backlog))
        yield GaugeMetricFamily("relais_uncommitted_speech_max_seconds", "Largest, among live streams inside an "
                                "utterance, wall seconds since its onset or its last committed text",
                                value=max(uncommitted, default=0.0))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
