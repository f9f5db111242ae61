"""Bearer-token authentication for the gRPC port and the web port.

    auth:
      tokens_file: /etc/relais/auth/tokens.yaml   # "": authentication off (anyone who reaches the port)
      open_health: true                           # grpc.health.v1 needs no token (probes, load balancers)
      open_reflection: true                       # server reflection needs no token (grpcurl, Riva tooling)

The tokens file (a mounted Kubernetes Secret works: it is re-read when it changes)
holds hashes, never tokens:

    tokens:
      - name: partner-a                # the name in logs and metrics (never the token)
        sha256: 9f86d08...             # hex sha256 of the token: `relais token hash` prints it
        max_streams: 4                 # optional: concurrent streaming calls of this token
        audio_minutes_per_day: 600     # optional: source audio per UTC day, on this server process
        expires: 2027-01-31T00:00:00Z  # optional: refused from then on (a date means its midnight UTC)
      - name: old-partner
        sha256: 60303ae...
        disabled: true                 # optional: refused with PERMISSION_DENIED

A call carries ``authorization: Bearer <token>`` metadata (what gRPC and Riva clients
send). The check runs in the interceptor before the handler does any work:

    no / malformed authorization       -> UNAUTHENTICATED
    a token whose hash is not listed   -> UNAUTHENTICATED
    a token past its expires           -> UNAUTHENTICATED
    a disabled token                   -> PERMISSION_DENIED
    max_streams streams already open   -> PERMISSION_DENIED
    audio_minutes_per_day used up      -> RESOURCE_EXHAUSTED (at the start, or mid-stream when it runs out)

The presented token is hashed and compared with every entry by ``hmac.compare_digest``.
On the web port the token comes in an ``Authorization: Bearer`` header or, for browsers
(which cannot set headers on a WebSocket), a ``token`` query parameter.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relais.errors import PermissionDenied, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

OPEN_HEALTH_PREFIX = "/grpc.health.v1.Health/"
OPEN_REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_KEYS = {"name", "sha256", "max_streams", "disabled", "expires", "audio_minutes_per_day"}


@dataclass(frozen=True)
class AuthSection:
    tokens_file: str = ""  # "": no authentication; a YAML list of token entries (name, sha256, ...)
    open_health: bool = True  # grpc.health.v1 without a token
    open_reflection: bool = True  # server reflection without a token

    @property
    def enabled(self) -> bool:
        return bool(self.tokens_file)

    def validate(self) -> None:
        pass  # the file itself is read and checked at start (TokenStore)


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    max_streams: int = 0  # 0: no cap of its own (server.max_sessions still holds)
    disabled: bool = False
    expires: datetime.datetime | None = None  # aware (UTC); None: never
    audio_minutes_per_day: float = 0.0  # source audio per UTC day (this process); 0: no quota


@dataclass
class Grant:
    """An authenticated call: the token's name, and its stream slot to give back when the call ends."""

    token: str  # the token's NAME ("" for an open method)
    store: TokenStore | None = None
    holds_stream: bool = False

    def charge(self, audio_s: float) -> None:
        """Count ``audio_s`` of source audio against the token's daily quota (``ResourceExhausted`` once
        it is used up: the stream ends)."""
        if self.store is not None and self.token:
            self.store.charge(self.token, audio_s)

    def release(self) -> None:
        if self.holds_stream and self.store is not None:
            self.holds_stream = False
            self.store.release(self.token)


OPEN = Grant(token="")
# The grant of the call being served (set by the interceptor and the web server around the handler),
# so that the stream host can charge the audio it receives to the token.
CURRENT_GRANT: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("relais_grant", default=None)


def hash_token(token: str) -> str:
    """The hex sha256 written in the tokens file for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class TokenStore:
    """The tokens file, read at start (a ``ValueError`` names the problem) and re-read when it changes."""

    section: AuthSection
    metrics: object | None = None  # a RelaisMetrics: token_calls_total, token_streams_active (by name)
    entries: tuple[TokenEntry, ...] = ()
    streams: dict[str, int] = field(default_factory=dict)  # open streaming calls per token name
    used: dict[str, tuple[datetime.date, float]] = field(default_factory=dict)  # (UTC day, audio s) per name
    _stamp: tuple | None = None
    _failed_stamp: tuple | None = None

    def __post_init__(self) -> None:
        self._stamp = _stamp(self.section.tokens_file)
        self.entries = read_tokens(Path(self.section.tokens_file))

    # --- the check -------------------------------------------------------------------------------

    def is_open(self, method: str) -> bool:
        return ((self.section.open_health and method.startswith(OPEN_HEALTH_PREFIX)) or
                (self.section.open_reflection and method.startswith(OPEN_REFLECTION_PREFIXES)))

    def authorize(self, method: str, authorization: str | None, streaming: bool, count: bool = True) -> Grant:
        """The grant for a call, or ``Unauthenticated``/``PermissionDenied`` saying what to fix."""
        if self.is_open(method):
            return OPEN
        self.refresh()
        entry = self._find(bearer_token(authorization))
        if entry.expires is not None and _now() >= entry.expires:
            raise Unauthenticated(f"token {entry.name!r} expired at {entry.expires.isoformat()}; ask the operator "
                                  f"for a new one")
        if entry.disabled:
            raise PermissionDenied(f"token {entry.name!r} is disabled; ask the operator to enable it or "
                                   f"issue a new one")
        if not streaming:
            if count:
                self._count(entry.name)
            return Grant(token=entry.name)
        self._check_quota(entry)
        open_now = self.streams.get(entry.name, 0)
        if entry.max_streams and open_now >= entry.max_streams:
            raise PermissionDenied(f"token {entry.name!r} already has {open_now} open stream(s), its limit "
                                   f"(max_streams {entry.max_streams}); end one first or ask for a higher limit")
        self._set_streams(entry.name, open_now + 1)
        self._count(entry.name)
        return Grant(token=entry.name, store=self, holds_stream=True)

    def release(self, name: str) -> None:
        self._set_streams(name, max(0, self.streams.get(name, 0) - 1))

    # --- the daily audio quota ---------------------------------------------------------------------

    def used_today_s(self, name: str) -> float:
        day, seconds = self.used.get(name, (None, 0.0))
        return seconds if day == _now().date() else 0.0

    def charge(self, name: str, audio_s: float) -> None:
        """Add ``audio_s`` to the token's use today; ``ResourceExhausted`` once past its quota."""
        used = self.used_today_s(name) + audio_s
        self.used[name] = (_now().date(), used)
        if self.metrics is not None:
            self.metrics.token_audio_seconds_total.labels(token=name).inc(audio_s)
        entry = next((e for e in self.entries if e.name == name), None)
        if entry is not None:
            self._check_quota(entry)

    def _check_quota(self, entry: TokenEntry) -> None:
        if entry.audio_minutes_per_day and self.used_today_s(entry.name) >= entry.audio_minutes_per_day * 60:
            raise ResourceExhausted(
                f"token {entry.name!r} has used its {entry.audio_minutes_per_day:g} audio minutes for "
                f"{_now().date().isoformat()} (audio_minutes_per_day, UTC days, counted per server process); "
                f"it resets at midnight UTC, or ask the operator for a higher quota")

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.token_calls_total.labels(token=name).inc()

    def _set_streams(self, name: str, value: int) -> None:
        self.streams[name] = value
        if self.metrics is not None:
            self.metrics.token_streams_active.labels(token=name).set(value)

    def _find(self, token: str) -> TokenEntry:
        presented = hash_token(token)
        found = None
        for entry in self.entries:  # every entry is compared: the time taken does not say which matched
            if hmac.compare_digest(presented, entry.sha256):
                found = entry
        if found is None:
            raise Unauthenticated("unknown token: check the token you were given (the server keeps only its "
                                  "sha256 in auth.tokens_file)")
        return found

    # --- reload ----------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the file if it changed; a broken file is logged and the previous tokens kept."""
        try:
            stamp = _stamp(self.section.tokens_file)
        except ValueError as exc:
            self._warn_once(("missing",), exc)
            return False
        if stamp in (self._stamp, self._failed_stamp):
            return False
        try:
            self.entries = read_tokens(Path(self.section.tokens_file))
        except ValueError as exc:
            self._warn_once(stamp, exc)
            return False
        self._stamp, self._failed_stamp = stamp, None
        log.info("auth.tokens_file changed: %d token(s) loaded (%s)", len(self.entries),
                 ", ".join(e.name for e in self.entries))
        return True

    def _warn_once(self, stamp: tuple, exc: Exception) -> None:
        if stamp != self._failed_stamp:
            self._failed_stamp = stamp
            log.warning("auth.tokens_file cannot be used (%s); still using the previous tokens", exc)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``authorization`` value, or ``Unauthenticated`` saying what to send."""
    if not authorization:
        raise Unauthenticated("missing token: send the metadata 'authorization: Bearer <token>'")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(f"the authorization metadata must be 'Bearer <token>', got scheme {scheme[:16]!r}")
    return token.strip()


def metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name.lower() == key:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def read_tokens(path: Path) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file; a ``ValueError`` names the file, the entry and the key to fix."""
    import yaml

    where = f"auth.tokens_file {path}"
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ValueError(f"{where}: must be a mapping with a 'tokens' list of entries (name, sha256, optional "
                         f"max_streams, disabled)")
    entries, names = [], set()
    for i, raw in enumerate(data["tokens"]):
        at = f"{where}: tokens[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{at}: must be a mapping with name and sha256, got {type(raw).__name__}")
        unknown = sorted(set(raw) - _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {unknown}; known keys are {sorted(_ENTRY_KEYS)}")
        name, digest = raw.get("name"), str(raw.get("sha256", "")).strip().lower()
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{at}.name: must be a non-empty string (it labels logs and metrics)")
        if name in names:
            raise ValueError(f"{at}.name: {name!r} is used twice; names must be unique")
        if not _HEX64.match(digest):
            raise ValueError(f"{at}.sha256: must be the 64 hex digits of the token's sha256 "
                             f"(`relais token hash` prints it), not the token itself")
        max_streams, disabled = raw.get("max_streams", 0), raw.get("disabled", False)
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 0:
            raise ValueError(f"{at}.max_streams: must be an integer >= 1 (or absent: no cap), got {max_streams!r}")
        if not isinstance(disabled, bool):
            raise ValueError(f"{at}.disabled: must be true or false, got {disabled!r}")
        quota = raw.get("audio_minutes_per_day", 0)
        if isinstance(quota, bool) or not isinstance(quota, (int, float)) or quota < 0:
            raise ValueError(f"{at}.audio_minutes_per_day: must be a number of minutes > 0 (or absent: no "
                             f"quota), got {quota!r}")
        names.add(name)
        entries.append(TokenEntry(name=name, sha256=digest, max_streams=max_streams, disabled=disabled,
                                  expires=parse_expiry(raw.get("expires"), f"{at}.expires"),
                                  audio_minutes_per_day=float(quota)))
    return tuple(entries)


def parse_expiry(value, key: str) -> datetime.datetime | None:
    """``expires`` as an aware datetime: a YAML timestamp or date, or an ISO 8601 string (no zone: UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{key}: must be an ISO 8601 date or time, e.g. 2027-01-31 or 2027-01-31T12:00:00Z, "
                             f"got {value!r}") from None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time())
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"{key}: must be an ISO 8601 date or time, e.g. 2027-01-31, got {value!r}")
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.timezone.utc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)  # follows a mounted Secret's symlinks
    except OSError as exc:
        raise ValueError(f"auth.tokens_file: cannot read {path}: {exc.strerror or exc}") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
