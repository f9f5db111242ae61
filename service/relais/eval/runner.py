"""Stream a manifest through a Relais server, N streams at a time, with a progress bar.

Also: the server under test (in-process or remote), its Prometheus histograms, and a
sampler of the server process's resident memory over time (only where we can see the
process: an in-process server, or a local one whose pid is given).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from relais.client import ClientResult, TranslateClient, TranslateOptions
from relais.eval.data import Utterance
from relais.eval.results import MemorySample

if TYPE_CHECKING:
    from relais.pipeline.engine import TranslationEngine
    from relais.server.app import InProcessServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamRun:
    utterance: Utterance
    result: ClientResult | None
    error: str = ""
    started_s: float = 0.0  # since the batch started
    ended_s: float = 0.0
    refusals: int = 0  # times the server refused it (RESOURCE_EXHAUSTED) before it ran or gave up


RETRY_FOR_S = 120.0  # a refused stream retries for at most this long, then counts as failed


@dataclass
class BatchRun:
    concurrency: int
    mode: str
    runs: list[StreamRun] = field(default_factory=list)
    wall_s: float = 0.0
    invalid: str = ""  # the server refused a stream as INVALID_ARGUMENT before any ran: its message


def options_for(mode: str, *, source_language: str, target_language: str, latency_mode: str,
                chunk_ms: int = 100) -> TranslateOptions:
    speed = 1.0 if mode == "realtime" else 0.0
    return TranslateOptions(target_language=target_language, source_language=source_language, speed=speed,
                            chunk_ms=chunk_ms, latency_mode=latency_mode, client_id="relais-eval")


class Progress:
    """A tqdm bar on stderr counting utterances (nothing shown without tqdm); a context manager."""

    def __init__(self, total: int, desc: str):
        try:
            from tqdm import tqdm
        except ImportError:
            log.warning("tqdm is not installed (pip install 'relais[eval]'): no progress bar")
            self._bar = None
        else:
            self._bar = tqdm(total=total, desc=desc, unit="utt", leave=True)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def stream_all(address: str, utterances: list[Utterance], options: TranslateOptions, *, concurrency: int = 1,
               mode: str = "realtime", desc: str = "eval", timeout_s: float | None = None,
               retry_refused_s: float = 0.0) -> BatchRun:
    """Every utterance through its own Translate stream, ``concurrency`` at a time (one channel each).
    ``retry_refused_s`` > 0: a stream the server refuses at capacity (RESOURCE_EXHAUSTED) tries again
    after that long, as a client backing off would (for up to RETRY_FOR_S); 0: it counts as failed."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if retry_refused_s < 0:
        raise ValueError(f"retry_refused_s must be >= 0 (0 = no retry), got {retry_refused_s}")
    batch = BatchRun(concurrency=concurrency, mode=mode)
    bar = Progress(len(utterances), desc)
    lock = threading.Lock()
    t0 = time.monotonic()
    ran = threading.Event()  # some stream was served: an invalid request is that stream's own

    def one(utt: Utterance) -> StreamRun:
        first_try, refusals = time.monotonic(), 0
        while True:
            if batch.invalid:  # the request itself is wrong: every other stream would be refused the same way
                run = StreamRun(utt, None, f"not run: {batch.invalid}", time.monotonic() - t0, time.monotonic() - t0)
                break
            started = time.monotonic() - t0
            try:
                with TranslateClient(address, timeout_s=timeout_s) as client:
                    result = client.translate_file(utt.path, options)
                run = StreamRun(utt, result, "", started, time.monotonic() - t0, refusals)
                ran.set()
            except Exception as exc:  # noqa: BLE001 - one failed stream is reported, not fatal
                status = exc.code() if isinstance(exc, grpc.RpcError) else None
                if status == grpc.StatusCode.INVALID_ARGUMENT and not ran.is_set():
                    batch.invalid = batch.invalid or exc.details()
                if (retry_refused_s and status == grpc.StatusCode.RESOURCE_EXHAUSTED
                        and time.monotonic() + retry_refused_s - first_try <= RETRY_FOR_S):
                    refusals += 1
                    time.sleep(retry_refused_s)
                    continue
                log.error("utterance %s failed: %s", utt.id, exc)
                run = StreamRun(utt, None, f"{type(exc).__name__}: {exc}", started, time.monotonic() - t0, refusals)
            break
        with lock:
            bar.update()
        return run

    with bar, ThreadPoolExecutor(concurrency, thread_name_prefix="relais-eval") as pool:
        batch.runs = list(pool.map(one, utterances))
    batch.wall_s = time.monotonic() - t0
    return batch


# --- the server under test -----------------------------------------------------------------------

@dataclass
class ServerUnderTest:
    address: str
    metrics_url: str | None  # Prometheus text endpoint, when known
    pid: int | None  # process whose RSS we can read (own process for an in-process server)
    in_process: InProcessServer | None = None  # when served from this process
    engine: TranslationEngine | None = None  # when loaded here

    def close(self) -> None:
        if self.in_process is not None:
            self.in_process.close()


class ProfileError(ValueError):
    """--profile overrides the engine cannot take."""


class RequestRefused(ValueError):
    """The server refused the eval's streams as invalid (a language or mode it cannot serve)."""


def engine_config(models_dir=None, latency_overrides: dict | None = None):
    """The in-process engine's config; ``latency_overrides`` (LatencyProfile fields) go on top of every profile
    and of the environment's ``RELAIS_LATENCY_OVERRIDES``."""
    from dataclasses import fields, replace

    from relais.pipeline.engine import EngineConfig
    from relais.server.config import load_config

    # what `relais serve` would build from the environment (RELAIS_LOAD_SHED_WAIT_S=0...), on these models
    base = replace(load_config(None).engine_config(), models_dir=models_dir)
    if not latency_overrides:
        return base
    if "latency_overrides" not in {f.name for f in fields(EngineConfig)}:
        raise ProfileError("--profile: this server build has no EngineConfig.latency_overrides")
    try:  # on top of the server's own (RELAIS_LATENCY_OVERRIDES), as `relais serve` would apply them
        return replace(base, latency_overrides={**base.latency_overrides, **latency_overrides})
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"--profile: {exc}") from exc


def start_server(address: str | None, *, models_dir=None, metrics_url: str | None = None, server_pid: int | None = None,
                 load_engine: bool = False, max_sessions: int = 8,
                 latency_overrides: dict | None = None) -> ServerUnderTest:
    """``address`` None: load the models here and serve them in-process; else use the running server."""
    engine = None
    if address is None or load_engine:
        from relais.pipeline.engine import TranslationEngine

        engine = TranslationEngine(engine_config(models_dir, latency_overrides))
    if address is not None:
        return ServerUnderTest(address, metrics_url, server_pid, None, engine)
    from relais.server.app import start_in_process
    from relais.server.config import load_config

    config = load_config(None).replace(server={"host": "127.0.0.1", "port": 0, "metrics_port": 0,
                                               "max_sessions": max_sessions})
    if models_dir is not None:
        config = config.replace(models={"dir": str(models_dir)})
    server = start_in_process(config, engine=engine)
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    return ServerUnderTest(server.address, url, os.getpid(), server, engine)


def scrape(url: str | None, timeout_s: float = 5.0) -> str | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read().decode("utf-8", "replace")
    except OSError as exc:
        log.warning("cannot scrape %s: %s", url, exc)
        return None


# --- memory over time ----------------------------------------------------------------------------

def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class MemorySampler:
    """Samples the RSS of ``pid`` every ``interval_s`` on a daemon thread."""

    def __init__(self, pid: int | None, interval_s: float = 0.5):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relais-eval-rss", daemon=True)

    def __enter__(self) -> MemorySampler:
        if self.pid is not None and rss_bytes(self.pid) is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.append(MemorySample(round(time.monotonic() - t0, 3), value))
            if self._stop.wait(self.interval_s):
                return
