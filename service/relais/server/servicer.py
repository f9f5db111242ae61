"""relais.v1.SpeechTranslator on grpc.aio: transport only, one Translate stream = one session.

The first request's StreamConfig becomes the stream's plan (``messages``); the audio
chunks after it go to the ``StreamHost`` (``streams``), which runs the session and
hands back its events; the ones the client asked for go out as TextEvent / AudioOut,
then the Summary. Errors are raised, never aborted here: the interceptor maps them
to status codes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from relais.errors import InvalidRequest
from relais.pipeline.events import PipelineEvent
from relais.server.messages import capabilities_message, event_response, plan_stream, started_message, summary_message
from relais.server.report import StreamReport
from relais.server.streams import ClientGone, StreamHost
from relais.v1 import translator_pb2 as pb
from relais.v1 import translator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class SpeechTranslatorServicer(pb_grpc.SpeechTranslatorServicer):
    def __init__(self, host: StreamHost):
        self.host = host

    async def ListCapabilities(self, request, context) -> pb.Capabilities:
        engine, _ = self.host.gate.serving_or_raise()
        return capabilities_message(engine.capabilities())

    async def Translate(self, request_iterator, context) -> None:
        """A coroutine (writes with context.write) so that cancellation always reaches ``finally``."""
        host = self.host
        async with host.accounting() as ticket:
            engine, _ = host.gate.serving_or_raise()
            requests = aiter(request_iterator)  # one iterator, shared with the reader task
            first = await host.next_before_deadline(requests, ticket, "StreamConfig")
            if first is None or first.WhichOneof("request") != "config":
                raise InvalidRequest("the first request must carry a StreamConfig")
            plan = plan_stream(engine, first.config)
            host.admit(ticket)
            session = await host.open_session(ticket, plan, first.config.client_id)
            await host.deliver(_write(context, pb.TranslateResponse(
                started=started_message(ticket.session_id, engine.capabilities(), plan))))

            async def send(events: list[PipelineEvent], report: StreamReport, now: float) -> None:
                for event in events:
                    response = event_response(event, plan, report, now)
                    if response is not None:
                        await _write(context, response)

            summary = await host.run(ticket, session, plan, _audio_of(requests), send, context.cancelled)
            await host.deliver(_write(context, pb.TranslateResponse(summary=summary_message(summary))))


async def _audio_of(requests: AsyncIterator[pb.TranslateRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        kind = request.WhichOneof("request")
        if kind == "config":
            raise InvalidRequest("only the first request may carry a StreamConfig; send AudioChunk after it")
        if kind != "audio":
            raise InvalidRequest("a TranslateRequest after the StreamConfig carried nothing; each must carry an "
                                 "AudioChunk")
        yield request.audio.data


async def _write(context, response: pb.TranslateResponse) -> None:
    """Send one response; a failed send means the call is over (the client cancelled or vanished,
    possibly before grpc marks the context cancelled), so it is not reported as a server error."""
    try:
        await context.write(response)
    except Exception as exc:  # noqa: BLE001 - grpc raises internal types (ExecuteBatchError, ...)
        log.debug("write failed, treating the client as gone: %r", exc)
        raise ClientGone() from exc
