"""The one place where Python exceptions become gRPC status codes.

Handlers raise; this grpc.aio server interceptor turns what escapes them into a
status:

    InvalidRequest                   -> INVALID_ARGUMENT  (message passed through)
    ResourceExhausted                -> RESOURCE_EXHAUSTED
    DeadlineExceeded                 -> DEADLINE_EXCEEDED (server.max_session_s, server.idle_timeout_s,
                                        load.call_timeout_s)
    Unavailable (warming, draining)  -> UNAVAILABLE
    Unimplemented                    -> UNIMPLEMENTED
    Unauthenticated                  -> UNAUTHENTICATED    (relais.server.auth: checked before the handler runs)
    PermissionDenied                 -> PERMISSION_DENIED
    anything else                    -> INTERNAL, "internal error; see server logs, request id X"
                                        (traceback logged under that id; no internal text
                                        reaches the client)

and counts each in ``relais_errors_total{code}``. Cancellation (the client went away)
and aborts a handler made itself pass through untouched.

The error types live in ``relais.errors`` (no dependencies, so the pipeline and the
audio decoder raise them without importing the server) and are re-exported here.
Only ``InvalidRequest`` means "the client can fix this": a plain ``ValueError`` (a
shape bug, a ``ManifestError``) is an internal fault and stays INTERNAL.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from relais.errors import (DeadlineExceeded, InvalidRequest, PermissionDenied, ResourceExhausted, Unauthenticated,
                           Unavailable, Unimplemented)
from relais.server.auth import CURRENT_GRANT, metadata_value

if TYPE_CHECKING:
    from relais.server.auth import Grant, TokenStore

__all__ = ["DeadlineExceeded", "ErrorMappingInterceptor", "InvalidRequest", "PermissionDenied", "ResourceExhausted",
           "Unauthenticated", "Unavailable", "Unimplemented", "status_for"]

log = logging.getLogger(__name__)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception (INTERNAL gets a placeholder)."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc) or "invalid request"
    if isinstance(exc, ResourceExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc) or "resource exhausted"
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc) or "unavailable"
    if isinstance(exc, Unimplemented):
        return grpc.StatusCode.UNIMPLEMENTED, str(exc) or "unimplemented"
    if isinstance(exc, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc) or "unauthenticated"
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc) or "permission denied"
    return grpc.StatusCode.INTERNAL, ""


Behaviour = Callable[..., Any]  # a handler's function: (request or iterator, context) -> response(s)
HandlerFactory = Callable[..., grpc.RpcMethodHandler]

# (request streaming, response streaming) -> the handler's function, and how to rebuild a handler around it
_KINDS: dict[tuple[bool, bool], tuple[Callable[[grpc.RpcMethodHandler], Behaviour], HandlerFactory]] = {
    (False, False): (lambda h: h.unary_unary, grpc.unary_unary_rpc_method_handler),
    (False, True): (lambda h: h.unary_stream, grpc.unary_stream_rpc_method_handler),
    (True, False): (lambda h: h.stream_unary, grpc.stream_unary_rpc_method_handler),
    (True, True): (lambda h: h.stream_stream, grpc.stream_stream_rpc_method_handler),
}


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Wraps every handler (unary or streaming, coroutine or async generator)."""

    def __init__(self, on_error: Callable[[str], None] | None = None, auth: TokenStore | None = None):
        self._on_error = on_error  # called with the status code name, e.g. "INVALID_ARGUMENT"
        self._auth = auth  # None: no authentication (auth.tokens_file unset)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
            handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        behaviour_of, factory = _KINDS[(handler.request_streaming, handler.response_streaming)]
        streaming = handler.request_streaming or handler.response_streaming
        return factory(self._wrap(behaviour_of(handler), handler_call_details.method, streaming),
                       request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)

    def _wrap(self, behaviour: Behaviour, method: str, streaming: bool) -> Behaviour:
        if inspect.isasyncgenfunction(behaviour):
            async def stream_wrapper(request, context):
                async with self._guarded(method, context, streaming):
                    async for response in behaviour(request, context):
                        yield response
            return stream_wrapper

        async def call_wrapper(request, context):
            async with self._guarded(method, context, streaming):
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
        return call_wrapper

    @contextlib.asynccontextmanager
    async def _guarded(self, method: str, context: aio.ServicerContext, streaming: bool) -> AsyncIterator[None]:
        """Authorise the call before any work, map what escapes the handler to a status, and give the
        token's grant back however the call ends."""
        grant, bound = None, None
        try:
            grant = self._authorize(method, context, streaming)
            bound = CURRENT_GRANT.set(grant)
            yield
        except Exception as exc:  # noqa: BLE001 - mapped by _abort
            await self._abort(exc, context, method)
        finally:
            if bound is not None:
                CURRENT_GRANT.reset(bound)
            if grant is not None:
                grant.release()

    def _authorize(self, method: str, context: aio.ServicerContext, streaming: bool) -> Grant | None:
        """The call's grant (None without auth); raises Unauthenticated/PermissionDenied before any work."""
        if self._auth is None:
            return None
        return self._auth.authorize(method, metadata_value(context.invocation_metadata(), "authorization"),
                                    streaming)

    async def _abort(self, exc: Exception, context: aio.ServicerContext, method: str) -> None:
        if isinstance(exc, aio.AbortError):
            raise exc  # the handler aborted with its own status
        code, message = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            request_id = uuid.uuid4().hex[:12]
            log.error("%s failed (request id %s)", method, request_id, exc_info=exc)
            message = f"internal error; see server logs, request id {request_id}"
        else:
            log.info("%s -> %s: %s", method, code.name, message)
        if self._on_error is not None:
            self._on_error(code.name)
        await context.abort(code, message)
