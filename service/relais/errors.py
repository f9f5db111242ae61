"""The project's own error types, shared by every layer that can refuse a request.

They live here, in a module with no dependencies, so the pipeline, the audio
decoder and the server can all raise them without importing each other. The
server's interceptor (``relais.server.interceptor``) is the one place they become
gRPC status codes:

    InvalidRequest     -> INVALID_ARGUMENT (the message reaches the client)
    ResourceExhausted  -> RESOURCE_EXHAUSTED
    DeadlineExceeded   -> DEADLINE_EXCEEDED (a time limit of the server: server.max_session_s, idle_timeout_s,
                          load.call_timeout_s for one model call: ModelCallTimeout)
    Unavailable        -> UNAVAILABLE
    Unimplemented      -> UNIMPLEMENTED (the message says what the server can do instead)
    Unauthenticated    -> UNAUTHENTICATED (no token, or an unknown one)
    PermissionDenied   -> PERMISSION_DENIED (a known token not allowed this: disabled, at its stream cap)
    anything else      -> INTERNAL (no internal text reaches the client)

Only raise ``InvalidRequest`` for something the client sent and can fix; a plain
``ValueError`` from a bug stays INTERNAL.
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The client sent something we cannot serve; the message says what to fix."""


class ResourceExhausted(Exception):
    """A limit was reached (concurrent sessions)."""


class DeadlineExceeded(Exception):
    """A time limit of the server ran out (a stream's wall-clock limit, no audio for too long); the message
    names the config key and its value."""


class ModelCallTimeout(DeadlineExceeded):
    """A model call ran past its bound (load.call_timeout_s) and was terminated: that stream ends, the
    model slot it held is free again."""


class Unavailable(Exception):
    """The server cannot take work right now (warming up, draining); retry elsewhere or later."""


class Unimplemented(Exception):
    """A call this server answers but cannot serve with its models (e.g. Riva's TranslateText without a
    text translation model); the message names what it can do instead."""


class Unauthenticated(Exception):
    """No credentials, or unknown ones (relais.server.auth); the message says what to send."""


class PermissionDenied(Exception):
    """A known token that may not do this now (disabled, at its max_streams); the message says why."""
