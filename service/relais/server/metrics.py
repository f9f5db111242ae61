"""Prometheus metrics of one server (its own registry, so tests can run several servers).

Names follow docs/DESIGN: prefix ``relais_``, units in names. Served over HTTP on
``server.metrics_port`` by prometheus_client (0 picks a free port; ``port`` says which).
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server

from relais.server.report import StreamSummary

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "cancelled", "error", "rejected")
STAGES = ("vad", "encoder", "language", "decoder", "tts")
DIRECTIONS = ("in", "out")

_STAGE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0, 30.0)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
_LOAD_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class RelaisMetrics:
    """Every metric the server exports, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("relais_sessions_active", "Translate streams in progress", registry=r)
        self.sessions_total = Counter(
            "relais_sessions_total", "Translate streams by outcome: ok, cancelled (client left), "
            "error (incl. bad config), rejected (busy, warming, draining)", ["outcome"], registry=r)
        self.stage_latency_seconds = Histogram("relais_stage_latency_seconds", "Duration of one model call",
                                               ["stage"], buckets=_STAGE_BUCKETS_S, registry=r)
        self.first_audio_latency_seconds = Histogram(
            "relais_first_audio_latency_seconds", "Wall time from speech onset to the first translated audio",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.first_text_latency_seconds = Histogram(
            "relais_first_text_latency_seconds", "Wall time from speech onset to the first committed text",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.output_lag_seconds = Histogram(
            "relais_output_lag_seconds", "Wall time from the arrival of a source span to the final text for it",
            buckets=_LATENCY_BUCKETS_S, registry=r)
        self.real_time_factor = Histogram("relais_real_time_factor", "Compute seconds per source second, per stream",
                                          buckets=_RTF_BUCKETS, registry=r)
        self.audio_seconds_total = Counter("relais_audio_seconds_total", "Audio seconds received (in) and spoken (out)",
                                           ["direction"], registry=r)
        self.errors_total = Counter("relais_errors_total", "RPCs that ended with an error, by gRPC status code",
                                    ["code"], registry=r)
        self.model_load_seconds = Gauge("relais_model_load_seconds", "Seconds spent loading and warming the models",
                                        registry=r)
        self.execution_provider_info = Gauge("relais_execution_provider_info",
                                             "The ONNX Runtime execution provider in use (value 1)",
                                             ["provider"], registry=r)
        for outcome in OUTCOMES:
            self.sessions_total.labels(outcome=outcome)
        for direction in DIRECTIONS:
            self.audio_seconds_total.labels(direction=direction)
        self._http = None
        self._http_thread: threading.Thread | None = None

    # --- recording ------------------------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float) -> None:
        """The model scheduler's observer: called from worker threads (prometheus_client is thread-safe)."""
        self.stage_latency_seconds.labels(stage=stage).observe(seconds)

    def record_stream(self, summary: StreamSummary) -> None:
        """A finished stream's latencies, from its summary (the same numbers the client gets)."""
        if summary.first_text_latency_s is not None:
            self.first_text_latency_seconds.observe(summary.first_text_latency_s)
        if summary.first_audio_latency_s is not None:
            self.first_audio_latency_seconds.observe(summary.first_audio_latency_s)
        for lag in summary.output_lags_s:
            self.output_lag_seconds.observe(lag)
        if summary.audio_in_s > 0:
            self.real_time_factor.observe(summary.real_time_factor)

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
