"""Server settings, loaded once at start: defaults, then a YAML file, then environment.

    server:   {host, port, metrics_port, web_port, health_port, max_sessions, max_session_s, idle_timeout_s,
               send_timeout_s, max_backlog_s, max_message_mb, keepalive_time_s, keepalive_timeout_s,
               keepalive_min_client_ping_s, drain_grace_s, worker_threads, metrics_created_series}
    models:   {dir, precision, encoder_precision}
    runtime:  {providers, voice_providers, intra_op_threads, trt_cache_dir, cpu_mem_arena, cudnn_conv_algo_search,
               heap_trim_s}
    tls:      {cert_file, key_file, client_ca_file, require_client_cert}   (relais.server.tls)
    auth:     {tokens_file, open_health, open_reflection}                  (relais.server.auth)
    load:     {shed_wait_s, shed_lag_s, shed_max_stretch, admit_max_load, new_stream_cost, call_timeout_s, max_batch,
               max_batch_wait_s}
    latency:  {overrides}   ("key=value,..." latency-profile keys for every mode, as `relais eval --profile`)

Environment overrides are named ``RELAIS_<SECTION>_<KEY>`` (``RELAIS_SERVER_PORT=50052``,
``RELAIS_RUNTIME_PROVIDERS=cuda,cpu``). Variables whose section is not one of ours
(``RELAIS_EVAL_DIR``...) are ignored; an unknown key in a known section is an error.
Every problem is a ``ValueError`` naming the key and saying what to fix.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relais.runtime.ort import RuntimeConfig, check_precision, check_runtime
from relais.server.auth import AuthSection
from relais.server.tls import TlsSection

if TYPE_CHECKING:
    from relais.pipeline.engine import EngineConfig

log = logging.getLogger(__name__)

ENV_PREFIX = "RELAIS_"
_SECRET_HINTS = ("password", "secret", "token", "credential")


@dataclass(frozen=True)
class ServerSection:
    host: str = "0.0.0.0"
    port: int = 50051  # 0: pick a free port
    metrics_port: int = 9090  # 0: pick a free port
    web_port: int = -1  # the browser page and WebSocket (docs/websocket.md); -1: off, 0: pick a free port
    health_port: int = -1  # plaintext grpc.health.v1 only, for probes when tls is on (docs/security.md); -1: off
    max_sessions: int = 8  # concurrent Translate streams; more are refused with RESOURCE_EXHAUSTED
    max_session_s: float = 3600.0  # wall-clock limit of one stream; past it DEADLINE_EXCEEDED
    idle_timeout_s: float = 30.0  # a stream that sends nothing for this long ends with DEADLINE_EXCEEDED
    send_timeout_s: float = 30.0  # a client that reads no response for this long is cut off (RESOURCE_EXHAUSTED)
    max_backlog_s: float = 20.0  # audio waiting for its session past this pauses reading (paces the sender)
    max_message_mb: int = 64  # largest gRPC message accepted (a whole file for Riva's Recognize)
    # Dead peers (a client that vanished without closing its connection) hold a session slot until TCP
    # gives up, which can take many minutes: the server pings a connection that has been quiet this long...
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0  # ...and closes it (its streams end, their slots freed) without an answer
    keepalive_min_client_ping_s: float = 10.0  # clients may ping this often; faster is answered with GOAWAY
    drain_grace_s: float = 30.0  # on SIGTERM, how long in-flight streams may run on
    worker_threads: int = 0  # threads running sessions' model work; 0: one per allowed session
    metrics_created_series: bool = False  # export prometheus_client's *_created series

    def validate(self) -> None:
        _check(bool(self.host.strip()), "server.host", "must not be empty (e.g. 0.0.0.0)", self.host)
        for key in ("port", "metrics_port"):
            value = getattr(self, key)
            _check(0 <= value <= 65535, f"server.{key}", "must be 0..65535 (0 picks a free port)", value)
        for key in ("web_port", "health_port"):
            value = getattr(self, key)
            _check(-1 <= value <= 65535, f"server.{key}", "must be -1 (off) or 0..65535 (0 picks a free port)", value)
        _check(self.max_sessions >= 1, "server.max_sessions", "must be at least 1", self.max_sessions)
        for key in ("max_session_s", "idle_timeout_s", "send_timeout_s", "max_backlog_s", "keepalive_time_s",
                    "keepalive_timeout_s", "keepalive_min_client_ping_s"):
            value = getattr(self, key)
            _check(value > 0, f"server.{key}", "must be > 0 seconds", value)
        _check(1 <= self.max_message_mb <= 2047, "server.max_message_mb", "must be 1..2047 (MB)", self.max_message_mb)
        _check(self.drain_grace_s >= 0, "server.drain_grace_s", "must be >= 0 seconds", self.drain_grace_s)
        _check(self.worker_threads >= 0, "server.worker_threads", "must be >= 0 (0 = automatic)",
               self.worker_threads)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def effective_worker_threads(self) -> int:
        return self.worker_threads or self.max_sessions


@dataclass(frozen=True)
class ModelsSection:
    dir: str = ""  # "": $RELAIS_MODELS_DIR or ~/.cache/relais/models
    precision: str = "auto"
    encoder_precision: str = "auto"

    def validate(self) -> None:
        check_precision(self.precision, key="models.precision")
        check_precision(self.encoder_precision, key="models.encoder_precision")


@dataclass(frozen=True)
class RuntimeSection:
    providers: tuple[str, ...] = ("tensorrt", "cuda", "cpu")  # tried in order; missing ones are skipped
    # The voice's providers. CPU by default even on a GPU host: on an H200 the Piper voice took 326 ms
    # a phrase through the CUDA provider against 66 ms on the host's CPU (docs/benchmarks.md, "On a GPU").
    voice_providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    trt_cache_dir: str = ""
    cpu_mem_arena: bool = False  # ONNX Runtime's CPU arena: faster to grow, never gives memory back
    cudnn_conv_algo_search: str = "heuristic"  # CUDA: cuDNN's pick per new shape; exhaustive times them all
    heap_trim_s: float = 10.0  # while streams run, give the C heap's free pages back to the OS this often
    #                            (glibc malloc_trim; relais.runtime.heap); 0: never

    def validate(self) -> None:
        check_runtime(self.providers, self.intra_op_threads, self.cudnn_conv_algo_search)  # RuntimeConfig's rules
        check_runtime(self.voice_providers, self.intra_op_threads, key="runtime.voice_providers")
        _check(self.heap_trim_s >= 0, "runtime.heap_trim_s", "must be >= 0 seconds (0 = off)", self.heap_trim_s)

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(providers=tuple(self.providers), intra_op_threads=self.intra_op_threads,
                             trt_cache_dir=self.trt_cache_dir, cpu_mem_arena=self.cpu_mem_arena,
                             cudnn_conv_algo_search=self.cudnn_conv_algo_search)


@dataclass(frozen=True)
class LoadSection:
    """Many streams on one machine (docs/operations.md, "Load"): shed decisions, then refuse."""

    shed_wait_s: float = 0.25  # a stream whose model calls queued longer than this between two
    #                            hypotheses decides less often; 0: never (always the profile's step)
    shed_max_stretch: float = 3.0  # at most this x the latency profile's step between hypotheses
    shed_lag_s: float = 1.0  # ...and only while it is this far behind real time (its oldest audio waiting
    #                          this long): streams that queue but keep up keep their grid; 0: queueing alone
    admit_max_load: float = 0.9  # refuse a new stream (RESOURCE_EXHAUSTED) when the scheduler's measured
    #   utilisation is at least this and a stream already sheds all it may (without shedding: when one more
    #   stream would push the utilisation past it); 0: off
    # What a stream started in the last LOAD_WINDOW_S (10 s) is expected to add to the utilisation, until
    # the measure shows it: a burst of starts is admitted only while these add up under admit_max_load.
    # 0.4 admits two at once on an idle pod: on 2 CPU cores three shedding streams already pass 2 s of p95
    # lag (docs/benchmarks.md, "Bursts of starts"); 0: trust the measure alone.
    new_stream_cost: float = 0.4
    call_timeout_s: float = 30.0  # one model call running longer is terminated: its stream ends with
    #                               DEADLINE_EXCEEDED and frees the model slot for the others; 0: no bound
    max_batch: int = 4  # greedy decodes of this many streams that queue together share decoder calls; 1: off
    max_batch_wait_s: float = 0.05  # hold a decode this long for other streams' to join, while other streams
    #                                 decode too (a lone stream never waits); 0: only those already queued

    def validate(self) -> None:
        _check(self.call_timeout_s >= 0, "load.call_timeout_s", "must be >= 0 seconds (0 = no bound)",
               self.call_timeout_s)
        _check(self.shed_wait_s >= 0, "load.shed_wait_s", "must be >= 0 seconds (0 = off)", self.shed_wait_s)
        _check(self.shed_lag_s >= 0, "load.shed_lag_s", "must be >= 0 seconds (0 = queue wait alone)",
               self.shed_lag_s)
        _check(1.0 <= self.shed_max_stretch <= 10.0, "load.shed_max_stretch", "must be within 1..10",
               self.shed_max_stretch)
        _check(0.0 <= self.admit_max_load <= 1.0, "load.admit_max_load", "must be within 0..1 (0 = off)",
               self.admit_max_load)
        _check(0.0 <= self.new_stream_cost <= 1.0, "load.new_stream_cost", "must be within 0..1 (0 = off)",
               self.new_stream_cost)
        _check(1 <= self.max_batch <= 64, "load.max_batch", "must be within 1..64 (1 = no batching)", self.max_batch)
        _check(0.0 <= self.max_batch_wait_s <= 0.5, "load.max_batch_wait_s", "must be within 0..0.5 seconds",
               self.max_batch_wait_s)


@dataclass(frozen=True)
class LatencySection:
    """Latency-profile keys moved for every mode (relais.pipeline.engine.LatencyProfile), written as
    ``relais eval --profile`` takes them: ``"first_frame_threshold=20,first_commit_words=1"``. The
    modes are measured points (docs/streaming.md, "Latency modes"); this is for a deployment that
    measured its own trade-off. "": the modes as they are."""

    overrides: str = ""

    def validate(self) -> None:
        self.parsed()

    def parsed(self) -> dict[str, object]:
        if not self.overrides.strip():
            return {}
        from relais.pipeline.engine import parse_latency_overrides

        try:
            return parse_latency_overrides(self.overrides)
        except ValueError as exc:
            raise ValueError(f"latency.overrides: {exc} (e.g. \"first_commit_words=1\")") from None


@dataclass(frozen=True)
class ServerConfig:
    server: ServerSection = field(default_factory=ServerSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    tls: TlsSection = field(default_factory=TlsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    load: LoadSection = field(default_factory=LoadSection)
    latency: LatencySection = field(default_factory=LatencySection)

    def validate(self) -> ServerConfig:
        for section in _sections(self):
            getattr(self, section).validate()
        return self

    def replace(self, **sections: dict[str, Any]) -> ServerConfig:
        """A copy with some keys changed: ``cfg.replace(server={"port": 0})`` (validated)."""
        return _apply(self, {k: dict(v) for k, v in sections.items()}, origin="").validate()

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Plain dict for the start-up log line, secrets (should any appear) masked."""
        out: dict[str, dict[str, Any]] = {}
        for section in _sections(self):
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: ("***" if v and any(h in k for h in _SECRET_HINTS) else
                                list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
        return out

    def engine_config(self) -> EngineConfig:
        """The relais.pipeline.engine.EngineConfig these settings describe."""
        from relais.pipeline.engine import EngineConfig
        from relais.pipeline.recognizer import LoadShedding

        models_dir = Path(self.models.dir).expanduser() if self.models.dir else None
        load = self.load
        shedding = LoadShedding(wait_high_s=load.shed_wait_s, max_stretch=load.shed_max_stretch,
                                lag_high_s=load.shed_lag_s) \
            if load.shed_wait_s > 0 else None
        return EngineConfig(models_dir=models_dir, precision=self.models.precision,
                            encoder_precision=self.models.encoder_precision,
                            runtime=self.runtime.runtime_config(), voice_providers=tuple(self.runtime.voice_providers),
                            load_shedding=shedding,
                            call_timeout_s=load.call_timeout_s, max_batch=load.max_batch,
                            max_batch_wait_s=load.max_batch_wait_s, latency_overrides=self.latency.parsed())


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Defaults, then the YAML file at ``path`` (if any), then ``RELAIS_*`` variables of ``env``."""
    cfg = ServerConfig()
    if path is not None:
        cfg = _apply(cfg, _read_yaml(Path(path)), origin=f"{path}: ")
    env = os.environ if env is None else env
    cfg = _apply(cfg, _env_overrides(cfg, env), origin="environment: ")
    return cfg.validate()


# --- internals -----------------------------------------------------------------------------------

def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key}: {rule}, got {value!r}")


def _sections(cfg: ServerConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg)]


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ValueError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: top level must be a mapping of sections "
                         f"({', '.join(_sections(ServerConfig()))}), got {type(data).__name__}")
    return data


def _env_overrides(cfg: ServerConfig, env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections = _sections(cfg)
    out: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section not in sections:
            continue  # someone else's variable (RELAIS_EVAL_DIR, RELAIS_TEST_...)
        if not key:
            raise ValueError(f"{name}: name a key, e.g. {ENV_PREFIX}{section.upper()}_<KEY>")
        out.setdefault(section, {})[key] = value
    return out


def _apply(cfg: ServerConfig, data: dict[str, Any], origin: str) -> ServerConfig:
    sections = _sections(cfg)
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"{origin}unknown section(s) {unknown}; known sections are {sections}")
    changes = {}
    for section, values in data.items():
        current = getattr(cfg, section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"{origin}{section}: must be a mapping of keys, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(current)}
        bad = sorted(set(values) - set(fields))
        if bad:
            raise ValueError(f"{origin}unknown key(s) {[f'{section}.{k}' for k in bad]}; "
                             f"known keys of {section} are {sorted(fields)}")
        typed = {k: _coerce(f"{section}.{k}", v, type(getattr(current, k))) for k, v in values.items()}
        changes[section] = dataclasses.replace(current, **typed)
    return dataclasses.replace(cfg, **changes)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a YAML or environment value to the field's type, or explain the mismatch."""
    if kind is tuple:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key}: must be a list of names (or a comma-separated string), got {value!r}")
        return tuple(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ValueError(f"{key}: must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (kind is int and isinstance(value, float)):
            raise ValueError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        try:
            return kind(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise ValueError(f"{key}: must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key}: must be a string, got {value!r}")
    raise TypeError(f"{key}: unsupported field type {kind}")  # a bug in this module, not in the config
