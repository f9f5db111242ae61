"""The Relais server: gRPC (SpeechTranslator + health + reflection), Prometheus metrics, and
the browser page with its WebSocket on ``server.web_port`` when enabled (``web``).

Life cycle: bind and start with health NOT_SERVING -> load and warm the engine in a
thread (Translate answers UNAVAILABLE meanwhile) -> SERVING -> on stop/SIGTERM:
NOT_SERVING at once, new streams UNAVAILABLE, in-flight streams get up to
``drain_grace_s`` to finish, then the rest are cancelled.

    serve(load_config("relais.yaml"))                 # the CLI: blocks until SIGINT/SIGTERM
    handle = start_in_process(); handle.address ...; handle.close()   # a private server
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from relais.pipeline.engine import TranslationEngine
from relais.runtime.heap import heap_trimmer
from relais.server.auth import TokenStore
from relais.server.config import ServerConfig, ServerSection, load_config
from relais.server.interceptor import ErrorMappingInterceptor
from relais.server.metrics import RelaisMetrics
from relais.server.riva import add_riva_services
from relais.server.servicer import SpeechTranslatorServicer
from relais.server.streams import Gate, StreamHost
from relais.server.tls import CertificateFiles, start_health_port
from relais.server.web import WebServer
from relais.v1 import translator_pb2, translator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = translator_pb2.DESCRIPTOR.services_by_name["SpeechTranslator"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RelaisServer:
    """One server instance; build it with :func:`build_server`, then ``await start()``."""

    def __init__(self, config: ServerConfig, engine: TranslationEngine | None = None):
        self.config = config
        self.metrics = RelaisMetrics(created_series=config.server.metrics_created_series)
        self.gate = Gate()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.web_port: int | None = None  # None: the web port is off (server.web_port = -1)
        self.health_port: int | None = None  # None: no plaintext health port (server.health_port = -1)
        self.tls: CertificateFiles | None = None  # None: plaintext (no tls.cert_file)
        self.auth: TokenStore | None = None  # None: no authentication (no auth.tokens_file)
        self._health_server: grpc.aio.Server | None = None
        self._web: WebServer | None = None
        self._given_engine = engine
        self._pool = ThreadPoolExecutor(config.server.effective_worker_threads, thread_name_prefix="relais-session")
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._force_stop: asyncio.Event | None = None
        self._heap_trim: asyncio.Task | None = None

    @property
    def engine(self) -> TranslationEngine | None:
        return self.gate.engine

    async def start(self) -> None:
        """Bind, serve health (NOT_SERVING), load and warm the models, then report SERVING."""
        cfg = self.config.server
        log.info("starting relais server: %s", self.config.redacted())
        self._force_stop = asyncio.Event()
        if self.config.tls.enabled:  # read and check the files before binding anything (ValueError names the key)
            self.tls = CertificateFiles(self.config.tls)
        if self.config.auth.enabled:  # the tokens file too (ValueError names the entry and key)
            self.auth = TokenStore(self.config.auth, self.metrics)
        self._server = grpc.aio.server(
            interceptors=[ErrorMappingInterceptor(on_error=self._count_error, auth=self.auth)],
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", cfg.max_message_bytes),
                     *grpc_keepalive_options(cfg)])
        self.host = StreamHost(self.gate, self.metrics, self._pool, max_sessions=cfg.max_sessions,
                               max_session_s=cfg.max_session_s, idle_timeout_s=cfg.idle_timeout_s,
                               admit_max_load=self.config.load.admit_max_load,
                               new_stream_cost=self.config.load.new_stream_cost,
                               send_timeout_s=cfg.send_timeout_s, max_backlog_s=cfg.max_backlog_s)
        servicer = SpeechTranslatorServicer(self.host)
        translator_pb2_grpc.add_SpeechTranslatorServicer_to_server(servicer, self._server)
        riva_names = add_riva_services(self._server, self.host)  # Riva's API on the same port (docs/riva.md)
        self._health_names = ("", SERVICE_NAME, *riva_names)
        self._health = health.aio.HealthServicer()
        for name in self._health_names:
            await self._health.set(name, _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, *riva_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server)
        address = f"{cfg.host}:{cfg.port}"
        try:
            self.port = (self._server.add_secure_port(address, self.tls.grpc_credentials()) if self.tls else
                         self._server.add_insecure_port(address))
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} (server.host/server.port): {exc}") from None
        await self._server.start()
        if cfg.health_port >= 0:
            self._health_server, self.health_port = await start_health_port(self._health, cfg.host, cfg.health_port)
        self.metrics_port = self.metrics.start_http(cfg.metrics_port, cfg.host)
        if cfg.web_port >= 0:  # the same StreamHost: shared sessions, admission, drain and metrics
            self._web = WebServer(self.host, on_error=self._count_error,
                                  ssl_context=self.tls.ssl_context() if self.tls else None, auth=self.auth)
            self.web_port = await self._web.start(cfg.host, cfg.web_port)
            log.info("web page and WebSocket on %s:%d", cfg.host, self.web_port)
        log.info("listening on %s:%d%s (NOT_SERVING until the models are warm)", cfg.host, self.port,
                 " with mutual TLS" if self.config.tls.require_client_cert else " with TLS" if self.tls else "")
        engine, load_s = await asyncio.get_running_loop().run_in_executor(None, self._load_engine)
        self.metrics.model_load_seconds.set(load_s)
        self.metrics.set_execution_provider(engine.capabilities().execution_provider)
        if self.gate.phase == "warming":  # not stopped meanwhile
            self.gate.scheduler = engine.new_scheduler(observer=self.metrics.observe_stage,
                                                       wait_observer=self.metrics.observe_scheduler_wait,
                                                       batch_observer=self.metrics.observe_batch)
            self.metrics.watch_scheduler(self.gate.scheduler)
            self.metrics.serving.set(1)
            self.gate.engine, self.gate.phase = engine, "serving"
            for name in self._health_names:
                await self._health.set(name, _SERVING)
            log.info("SERVING on port %d (models ready in %.1f s)", self.port, load_s)
            trimmer = heap_trimmer() if self.config.runtime.heap_trim_s > 0 else None
            if trimmer is not None:
                self._heap_trim = asyncio.create_task(self._trim_heap(trimmer, self.config.runtime.heap_trim_s))

    async def _trim_heap(self, trim: Callable[[], float], every_s: float) -> None:
        """Every ``every_s`` while streams run (and once after the last one ends), give the C heap's
        free pages back: without it the server's RSS climbs in steps to its high-water mark and stays
        there (docs/operations.md, "Memory")."""
        loop = asyncio.get_running_loop()
        busy = False
        while True:
            await asyncio.sleep(every_s)
            was_busy, busy = busy, self.gate.active > 0
            if busy or was_busy:
                self.metrics.heap_trim_seconds.observe(await loop.run_in_executor(None, trim))

    def _load_engine(self) -> tuple[TranslationEngine, float]:
        started = time.monotonic()
        engine = self._given_engine or TranslationEngine(self.config.engine_config())
        engine.warm_up()
        load_s = time.monotonic() - started
        if self._given_engine is not None:
            load_s += engine.load_s  # it was loaded before we got it
        return engine, load_s

    def _count_error(self, code_name: str) -> None:
        self.metrics.errors_total.labels(code=code_name).inc()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new streams, let in-flight ones run up to ``grace`` s, then stop."""
        grace = self.config.server.drain_grace_s if grace is None else grace
        self.gate.phase = "draining"
        self.metrics.serving.set(0)
        if self._heap_trim is not None:
            self._heap_trim.cancel()
            self._heap_trim = None
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            deadline = time.monotonic() + grace
            while self.gate.active and time.monotonic() < deadline and not self._force_stop.is_set():
                await asyncio.sleep(0.05)
            if self.gate.active:
                log.warning("cancelling %d stream(s) still running after the %.1f s drain", self.gate.active, grace)
            await self._server.stop(0)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._web is not None:
            await self._web.stop()  # streams still open are closed with 1001 (going away)
            self._web = None
        self.metrics.stop_http()
        self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("server stopped")

    def force_stop(self) -> None:
        """Cut a drain short (a second signal)."""
        if self._force_stop is not None:
            self._force_stop.set()


def grpc_keepalive_options(cfg: ServerSection) -> list[tuple[str, int]]:
    """The gRPC channel arguments that find dead peers (server.keepalive_*; docs/security.md)."""
    return [
        ("grpc.keepalive_time_ms", round(cfg.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(cfg.keepalive_timeout_s * 1000)),
        # The same bound for gRPC's other pings (flow-control probes, 60 s by default): one left unanswered
        # by a vanished peer holds the keepalive ping back (one ping in flight at a time) until it times out.
        ("grpc.http2.ping_timeout_ms", round(cfg.keepalive_timeout_s * 1000)),
        # By default gRPC stops sending keepalive pings after 2 with no data sent in between (newer versions
        # throttle them to one a minute): a stream with nothing to send back (a silent speaker) would not
        # be checked again. 0: no such limit.
        ("grpc.http2.max_pings_without_data", 0),
        # Accept clients' keepalive pings down to this interval (gRPC's default, 5 min, cuts off any client
        # that pings more often while the server has nothing to send, e.g. through a pause in speech)...
        ("grpc.http2.min_ping_interval_without_data_ms", round(cfg.keepalive_min_client_ping_s * 1000)),
        # ...also on a connection without a call (a client keeping its channel warm between streams),
        # which the server then pings too, so dead idle connections are closed as well.
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def build_server(config: ServerConfig | None = None, engine: TranslationEngine | None = None) -> RelaisServer:
    """A server for ``config`` (default: :func:`load_config`), loading its own engine unless given one."""
    return RelaisServer(config if config is not None else load_config(), engine)


# --- entry points ------------------------------------------------------------------------------

def serve(config: ServerConfig) -> int:
    """Run until SIGINT/SIGTERM, then drain; the exit status (0 after a clean drain)."""
    return asyncio.run(_serve(config))


async def _serve(config: ServerConfig) -> int:
    server = build_server(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            server.force_stop()
        else:
            log.info("%s: draining (up to %.0f s)", signal.Signals(signum).name, config.server.drain_grace_s)
            server.gate.phase = "draining"
            server.metrics.serving.set(0)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    starting = asyncio.create_task(server.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        log.error("server failed to start: %s", starting.exception(), exc_info=starting.exception())
        stopping.cancel()
        await server.stop(0)
        return 1
    if not starting.done():
        starting.cancel()  # stopped while the models were still loading
    await stopping
    await server.stop()
    return 0


class InProcessServer:
    """A server on a background thread with its own event loop (the client CLI's fallback)."""

    def __init__(self, config: ServerConfig, engine: TranslationEngine | None = None,
                 ready_timeout_s: float = 600.0):
        self.server = build_server(config, engine)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="relais-in-process", daemon=True)
        self._thread.start()
        if not self._ready.wait(ready_timeout_s):
            raise TimeoutError(f"the in-process server was not ready within {ready_timeout_s:.0f} s")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"the in-process server failed to start: {self._error}") from self._error

    @property
    def address(self) -> str:
        host = self.server.config.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
        return f"{host}:{self.server.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # noqa: BLE001 - reported to the constructor's thread
            self._error = exc
            self._ready.set()
            await self.server.stop(0)
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.stop(0)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> InProcessServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_in_process(config: ServerConfig | None = None,
                     engine: TranslationEngine | None = None) -> InProcessServer:
    """Start a private server (by default on 127.0.0.1, free ports) and wait until it is SERVING."""
    if config is None:
        config = load_config().replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0})
    return InProcessServer(config, engine)
