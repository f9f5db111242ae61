"""What every Riva RPC shares: running a stream on the ``StreamHost`` the way relais.v1's servicer does.

A Riva streaming request is a oneof: its config first, then ``audio_content`` bytes.
``run_stream`` reads the config, builds the plan (which validates it), takes a session
slot, feeds the audio to the host and writes what the responder makes of each batch of
events. Errors are raised, never aborted here: the server's interceptor maps them to
status codes, for Riva's services as for relais.v1. Clients may send ``authorization``
and ``function-id`` metadata (NVIDIA's cloud wants them); they are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relais.errors import InvalidRequest
from relais.pipeline.engine import TranslationEngine
from relais.pipeline.events import PipelineEvent
from relais.server.messages import StreamPlan
from relais.server.report import StreamReport, StreamSummary
from relais.server.streams import ClientGone, StreamHost

log = logging.getLogger(__name__)


class Responder(Protocol):
    def add(self, events: list[PipelineEvent]) -> list[Any]:
        """The responses (or results) for one batch of the session's events."""


@dataclass(frozen=True)
class RivaStream:
    """How one streaming RPC looks: its name, its config field and how it turns into a plan and responses."""

    rpc: str
    config_field: str  # the oneof member that carries the config
    start: Callable[[TranslationEngine, Any], tuple[StreamPlan, Responder]]  # config -> plan, responder
    respond: Callable[[Any], Any]  # one result -> its response message


async def run_stream(host: StreamHost, stream: RivaStream, request_iterator, context) -> StreamSummary | None:
    async with host.accounting() as ticket:
        engine, _ = host.gate.serving_or_raise()
        requests = aiter(request_iterator)  # one iterator, shared with the host's reader task
        first = await host.next_before_deadline(requests, ticket, stream.config_field)
        if first is None or first.WhichOneof("streaming_request") != stream.config_field:
            raise InvalidRequest(f"{stream.rpc}: the first request must carry {stream.config_field}, "
                                 f"then audio_content")
        plan, responder = stream.start(engine, getattr(first, stream.config_field))
        host.admit(ticket)
        session = await host.open_session(ticket, plan, f"riva {stream.rpc} {context.peer()}")

        async def send(events: list[PipelineEvent], report: StreamReport, now: float) -> None:
            for result in responder.add(events):
                await write(context, stream.respond(result))

        return await host.run(ticket, session, plan, audio_of(requests, stream), send, context.cancelled)


async def audio_of(requests: AsyncIterator, stream: RivaStream) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("streaming_request") != "audio_content":
            raise InvalidRequest(f"{stream.rpc}: only the first request may carry {stream.config_field}; "
                                 f"send audio_content after it")
        yield request.audio_content


async def write(context, response) -> None:
    """Send one response; a failed send means the call is over (the client cancelled or vanished)."""
    try:
        await context.write(response)
    except Exception as exc:  # grpc raises internal types
        log.debug("write failed, treating the client as gone: %r", exc)
        raise ClientGone() from exc
