"""relais.v1.Translate over a WebSocket, and the browser page, on ``server.web_port``.

A browser cannot open a client-streaming gRPC call, so this HTTP port carries the same
stream as a WebSocket (protocol: docs/websocket.md):

    GET /                  the page (webpage/: plain HTML/JS, no build step, no CDN)
    GET /v1/capabilities   ListCapabilities as JSON (503 while warming up)
    GET /v1/translate      WebSocket: one Translate stream per connection

Client -> server: first a text frame holding a StreamConfig in protobuf's JSON mapping
(the same fields and validation as gRPC), then binary frames of audio in its
input_format, then ``{"type": "end"}`` (gRPC's half-close). Server -> client: text
frames holding TranslateResponse JSON (started, text, audio, summary); an audio event's
data is left out of its JSON and follows it as one binary frame. Errors end the
connection with a close code from ``CLOSE_CODES`` (the reason is the gRPC message,
cut to the 123 bytes a close frame holds), after an ``{"error": ...}`` text frame
that carries the whole message.

Like the gRPC servicer this is transport only: the ``StreamHost`` owns the serving
gate, admission, the session, its report and metrics, so both ports share
``max_sessions``, drain and ``relais_sessions_*``.

Security (docs/security.md): with ``tls`` set, ``WebServer`` takes an ``ssl.SSLContext``
following the gRPC port's certificate files (wss and https). With ``auth`` set,
``/v1/capabilities`` and ``/v1/translate`` need the same token as gRPC, in an
``Authorization: Bearer`` header or, for browsers (which cannot set headers on a
WebSocket), a ``token`` query parameter: a missing or unknown token gets HTTP 401 before
the handshake, a disabled one 403; a token at its ``max_streams`` is closed with 4007
after the handshake. The page and its assets stay open (they hold no data).
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from google.protobuf import json_format
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from relais.errors import (DeadlineExceeded, InvalidRequest, PermissionDenied, ResourceExhausted, Unauthenticated,
                           Unavailable)
from relais.pipeline.events import PipelineEvent
from relais.server.auth import CURRENT_GRANT, TokenStore, metadata_value
from relais.server.interceptor import status_for
from relais.server.messages import capabilities_message, event_response, plan_stream, started_message, summary_message
from relais.server.report import StreamReport
from relais.server.streams import ClientGone, StreamHost, StreamTicket
from relais.v1 import translator_pb2 as pb

log = logging.getLogger(__name__)
# The WebSocket library logs every request and connection at INFO: an access log, kept quiet
# unless asked for (logging.getLogger("relais.server.web.access").setLevel(logging.INFO)).
access_log = logging.getLogger(__name__ + ".access")
if access_log.level == logging.NOTSET:
    access_log.setLevel(logging.WARNING)

TRANSLATE_PATH = "/v1/translate"
WEB_METHOD = "/relais.v1.SpeechTranslator/Translate"  # what the web port's calls count as for auth
CAPABILITIES_PATH = "/v1/capabilities"
MAX_MESSAGE_BYTES = 1 << 20  # one incoming frame (100 ms of 48 kHz stereo float32 is 38 KB)
END_MESSAGE = {"type": "end"}
PAGE_DIR = Path(__file__).with_name("webpage")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
                                            "media-src 'self' blob:; frame-ancestors *"}
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason


class WrongFrameType(InvalidRequest):
    """Audio in a text frame, or JSON in a binary one."""


class FrameTooBig(InvalidRequest):
    """A frame over MAX_MESSAGE_BYTES (the library has already closed with 1009)."""


# How a stream that ends with an exception closes: the first row whose type matches. The
# gRPC status it stands for (errors_total{code}, the error frame) comes from status_for.
CLOSE_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (WrongFrameType, CloseCode.UNSUPPORTED_DATA),  # 1003
    (FrameTooBig, CloseCode.MESSAGE_TOO_BIG),  # 1009
    (InvalidRequest, 4003),  # 4000 + INVALID_ARGUMENT (3)
    (DeadlineExceeded, 4004),  # 4000 + DEADLINE_EXCEEDED (4)
    (PermissionDenied, 4007),  # 4000 + PERMISSION_DENIED (7)
    (Unauthenticated, 4016),  # 4000 + UNAUTHENTICATED (16)
    (ResourceExhausted, 4008),  # 4000 + RESOURCE_EXHAUSTED (8)
    (Unavailable, 4014),  # 4000 + UNAVAILABLE (14)
    (Exception, 4013),  # 4000 + INTERNAL (13)
)


def close_code_for(exc: BaseException) -> int:
    return next(code for kind, code in CLOSE_CODES if isinstance(exc, kind))


class WebServer:
    """The web port: the page, capabilities and the Translate WebSocket over ``host``."""

    def __init__(self, host: StreamHost, on_error: Callable[[str], None] | None = None,
                 ssl_context: ssl.SSLContext | None = None, auth: TokenStore | None = None):
        self.host = host
        self._auth = auth  # None: no token needed
        self._on_error = on_error  # called with the gRPC status name, as the interceptor does
        self._ssl = ssl_context
        self._pages = _read_pages(PAGE_DIR)
        self._server: Server | None = None

    async def start(self, bind_host: str, port: int) -> int:
        """Listen (port 0 picks a free one); the port bound."""
        try:
            self._server = await serve(self._handle, bind_host, port, process_request=self._process_request,
                                       max_size=MAX_MESSAGE_BYTES, compression=None, ssl=self._ssl,
                                       logger=access_log)
        except OSError as exc:
            raise OSError(f"cannot listen on {bind_host}:{port} (server.host/server.web_port): {exc}") from None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the port; streams still open are closed with 1001 (going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- HTTP ------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in (TRANSLATE_PATH, CAPABILITIES_PATH) and self._auth is not None:
            try:
                self._auth.authorize(WEB_METHOD, _authorization(request), streaming=False,
                                    count=path == CAPABILITIES_PATH)  # a stream counts once it opens
            except (Unauthenticated, PermissionDenied) as exc:
                code, message = status_for(exc)
                if self._on_error is not None:
                    self._on_error(code.name)
                status = HTTPStatus.UNAUTHORIZED if code.name == "UNAUTHENTICATED" else HTTPStatus.FORBIDDEN
                return connection.respond(status, f"{message} (web port: an 'Authorization: Bearer' header or "
                                                  f"a token query parameter)\n")
        if path == TRANSLATE_PATH:
            return None  # go on with the WebSocket handshake (a plain GET gets 426)
        if path == CAPABILITIES_PATH:
            try:
                engine, _ = self.host.gate.serving_or_raise()
            except Unavailable as exc:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}\n")
            caps = json_format.MessageToJson(capabilities_message(engine.capabilities()), indent=None)
            return _response(caps.encode(), "application/json")
        if (page := self._pages.get(path)) is not None:
            return _response(*page, extra=_PAGE_HEADERS)
        return connection.respond(HTTPStatus.NOT_FOUND, f"{path} not found; the page is at /, "
                                                        f"the WebSocket at {TRANSLATE_PATH}\n")

    # --- WebSocket -------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        grant = None
        try:
            if self._auth is not None:  # the token was checked before the handshake; now take a stream slot
                grant = self._auth.authorize(WEB_METHOD, _authorization(ws.request), streaming=True)
                CURRENT_GRANT.set(grant)  # this connection's own task: the stream host charges its audio to it
            async with self.host.accounting() as ticket:
                await self._translate(ws, ticket)
        except Exception as exc:  # noqa: BLE001 - mapped to a close code below
            await self._close_for(ws, exc)
        else:
            await ws.close(CloseCode.NORMAL_CLOSURE, "end of stream")  # no-op if the client has gone
        finally:
            if grant is not None:
                grant.release()

    async def _translate(self, ws: ServerConnection, ticket: StreamTicket) -> None:
        """One Translate stream: the servicer's steps, with frames instead of messages."""
        host = self.host
        engine, _ = host.gate.serving_or_raise()
        incoming = _incoming(ws)  # one iterator: the config, then the audio
        first = await host.next_before_deadline(incoming, ticket, "StreamConfig")
        if first is None:
            raise ClientGone()
        config = parse_config(first)
        plan = plan_stream(engine, config)
        host.admit(ticket)
        session = await host.open_session(ticket, plan, config.client_id or _peer(ws))
        await _send(ws, pb.TranslateResponse(started=started_message(ticket.session_id, engine.capabilities(), plan)))

        async def send(events: list[PipelineEvent], report: StreamReport, now: float) -> None:
            for event in events:
                response = event_response(event, plan, report, now)
                if response is not None:
                    await _send(ws, response)

        summary = await host.run(ticket, session, plan, _audio_of(incoming), send,
                                 lambda: ws.state is not State.OPEN)
        await _send(ws, pb.TranslateResponse(summary=summary_message(summary)))

    async def _close_for(self, ws: ServerConnection, exc: Exception) -> None:
        """Tell the client what went wrong (error frame, close code and reason) and count it."""
        code, message = status_for(exc)
        if not message:  # INTERNAL: no internal text reaches the client
            request_id = uuid.uuid4().hex[:12]
            log.error("WebSocket Translate failed (request id %s)", request_id, exc_info=exc)
            message = f"internal error; see server logs, request id {request_id}"
        else:
            log.info("WebSocket Translate -> %s: %s", code.name, message)
        if self._on_error is not None:
            self._on_error(code.name)
        close_code = close_code_for(exc)
        if ws.state is not State.OPEN:
            return  # the library closed it already (oversize frame) or the client went away
        try:
            await ws.send(json.dumps({"error": {"code": code.name, "closeCode": close_code, "message": message}}))
            await ws.close(close_code, _reason(message))
        except ConnectionClosed:
            pass


def parse_config(message: str | bytes) -> pb.StreamConfig:
    """The first message: a StreamConfig in protobuf's JSON mapping (camelCase or field names)."""
    if isinstance(message, bytes):
        raise WrongFrameType("send the StreamConfig first, as JSON in a text frame; audio goes in binary "
                             "frames after it")
    try:
        return json_format.Parse(message, pb.StreamConfig())
    except json_format.ParseError as exc:
        raise InvalidRequest(f"the first message must be a StreamConfig as JSON: {exc}") from None


async def _incoming(ws: ServerConnection) -> AsyncIterator[str | bytes]:
    """The client's frames, until the connection closes (``_closed`` says why)."""
    while True:
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        yield message


def _closed(exc: ConnectionClosed) -> Exception:
    """Why the connection closed under us: an oversize frame (the library closed it with 1009),
    else the client went away."""
    if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
        return FrameTooBig(f"a frame exceeded {MAX_MESSAGE_BYTES} bytes; send smaller chunks (e.g. 100 ms of audio)")
    return ClientGone()


async def _audio_of(incoming: AsyncIterator[str | bytes]) -> AsyncIterator[bytes]:
    async for message in incoming:
        if isinstance(message, bytes):
            yield message
            continue
        try:
            is_end = json.loads(message) == END_MESSAGE
        except ValueError:
            is_end = False
        if is_end:
            return
        raise WrongFrameType('after the StreamConfig send audio in binary frames, then {"type": "end"}')


async def _send(ws: ServerConnection, response: pb.TranslateResponse) -> None:
    """One response as JSON; an audio event's bytes follow it in a binary frame."""
    fields = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    audio = "audio" in fields
    if audio:
        fields["audio"].pop("data", None)
    try:
        await ws.send(json.dumps(fields, separators=(",", ":")))
        if audio:
            await ws.send(response.audio.data)
    except ConnectionClosed as exc:
        raise _closed(exc) from None


def _reason(message: str) -> str:
    encoded = message.encode()
    if len(encoded) <= _MAX_REASON_BYTES:
        return message
    return encoded[:_MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _authorization(request: Request | None) -> str | None:
    """The request's credentials: its Authorization header, else ``?token=`` (browsers) as a bearer token."""
    if request is None:
        return None
    header = metadata_value(list(request.headers.raw_items()), "authorization")
    if header:
        return header
    token = parse_qs(urlsplit(request.path).query).get("token")
    return f"Bearer {token[0]}" if token and token[0] else None


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"web {address[0]}" if address else "web"


def _read_pages(folder: Path) -> dict[str, tuple[bytes, str]]:
    """Each file of the page folder by URL path (``/`` is index.html), with its content type."""
    pages = {f"/{p.name}": (p.read_bytes(), _CONTENT_TYPES[p.suffix])
             for p in sorted(folder.iterdir()) if p.suffix in _CONTENT_TYPES}
    pages["/"] = pages["/index.html"]
    return pages


def _response(body: bytes, content_type: str, extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})})
    return Response(HTTPStatus.OK, "OK", headers, body)
