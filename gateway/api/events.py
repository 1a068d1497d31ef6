"""`GET /events`: the organisation's call events as Server-Sent Events, live, resumable.

Each event is sent as `id: <seq>` (its place in the organisation's sequence), `event:
<type>` and `data: <the event's JSON>`. A client resumes after a reconnect with the
`Last-Event-ID` header (browsers' EventSource sends it by itself) or, where it cannot set
headers, `?last_event_id=` (the header wins: EventSource keeps the first URL but sends the
header on reconnect): every event after that id is sent, then live ones. Without either,
the stream starts at the head (only new events); `last_event_id=0` replays the whole
sequence. `?call_id=` keeps one call's events (ids stay the organisation's). The stream
opens with `retry:` and sends a `: keep-alive` comment after `EVENT_HEARTBEAT_S` without
events. A client that stops reading is dropped once `EVENT_CLIENT_BUFFER` events wait for
it: its connection is cut and it resumes from its last id.

A streaming route, so not an `Operation`: it checks the key the same way (`authenticate`),
and `OPENAPI_PATHS` describes it in the published document.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.auth import principal_of
from gateway.connections import ABORT_EXTENSION
from gateway.errors import BadRequest, CallNotFound, RequestInvalid
from gateway.event_feed import StreamEnded, Subscription
from gateway.metrics import GatewayMetrics
from gateway.services import Services
from storage import EventRecord, StorageError

log = logging.getLogger(__name__)

_MAX_ID_DIGITS = 18


class EventQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    call_id: str | None = Field(default=None, max_length=128)
    last_event_id: str | None = Field(default=None, max_length=64)


# The line ends of text/event-stream: CRLF, CR, LF (WHATWG HTML, "Parsing an event stream").
# Not `str.splitlines()`, which also splits U+2028, U+2029, U+0085, \x1c-\x1e: bodies are
# JSON with those left unescaped, and a client would get them cut into broken pieces.
_LINE_END = re.compile(r"\r\n|\r|\n")


def frame(event: EventRecord) -> str:
    """One event in the text/event-stream format (a body with line breaks is split over
    `data:` lines, which the client joins again)."""
    data = "".join(f"data: {line}\n" for line in _LINE_END.split(event.body))
    return f"id: {event.seq}\nevent: {event.type}\n{data}\n"


def _resume_point(raw: str, head: int) -> int:
    where = ["header", "Last-Event-ID"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_ID_DIGITS:
        raise BadRequest(where, "Last-Event-ID must be a non-negative integer (an event's id)")
    after = int(raw)
    if after > head:
        raise BadRequest(where, f"Last-Event-ID {after} is beyond the last event ({head})")
    return after


async def stream_events(request: Request) -> Response:
    services: Services = request.app.state.services
    principal = await principal_of(request, services.database.accounts, request.app.state.sessions)
    try:
        query = EventQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        details = [
            {"loc": ["query", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise RequestInvalid("invalid query parameters", details) from exc
    org_id = principal.org_id
    raw = request.headers.get("last-event-id") or query.last_event_id or None
    after = None
    if raw is not None:
        after = _resume_point(raw.strip(), await services.database.events.head(org_id))
    if query.call_id is not None:
        call = await services.database.calls.get_call(query.call_id, with_turns=False)
        if call.org_id != org_id:
            raise CallNotFound(f"no call {query.call_id!r}")
    sub = await services.event_feed.subscribe(org_id, after=after, call_id=query.call_id)
    settings = services.settings
    return EventStreamResponse(
        sub,
        heartbeat_s=settings.event_heartbeat_s,
        retry_ms=settings.event_retry_ms,
        metrics=services.metrics,
    )


class EventStreamResponse(Response):
    """Writes a subscription's events until the client leaves, the subscription is dropped
    (the connection is cut: the client's buffer is full, so no closing chunk could be
    written) or closed (shutdown: the stream ends cleanly)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        subscription: Subscription,
        *,
        heartbeat_s: float,
        retry_ms: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.status_code = 200
        self.background = None
        # no-transform and X-Accel-Buffering: proxies pass each event on as it comes.
        self.init_headers({"cache-control": "no-store, no-transform", "x-accel-buffering": "no"})
        self._sub = subscription
        self._heartbeat_s = heartbeat_s
        self._retry_ms = retry_ms
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self._sub
        self._metrics.event_streams_active += 1
        tasks = [
            asyncio.create_task(self._write(send), name="event-stream"),
            asyncio.create_task(_until_disconnect(receive), name="event-stream-client"),
            asyncio.create_task(sub.dropped.wait(), name="event-stream-dropped"),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sub.dropped.is_set():
                # Its last chunk could never be written: cut the connection (uvicorn would
                # otherwise keep it until the client reads what its socket holds).
                abort = scope.get("extensions", {}).get(ABORT_EXTENSION, {}).get("abort")
                if abort is not None:
                    abort()
                    await asyncio.sleep(0)  # connection_lost runs: uvicorn sees the client gone
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            sub.close()
            self._metrics.event_streams_active -= 1

    async def _write(self, send: Send) -> None:
        async def chunk(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await chunk(f"retry: {self._retry_ms}\n\n")
        while True:
            try:
                events = await self._sub.next(wait_s=self._heartbeat_s)
            except StreamEnded:
                break
            except StorageError as exc:  # while reading missed events: the client resumes
                log.warning("event stream ended: %s", exc, extra={"org_id": self._sub.org_id})
                break
            await chunk("".join(frame(e) for e in events) if events else ": keep-alive\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def _error(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": _ERROR}}}


OPENAPI_PATHS: dict[str, Any] = {
    "/events": {
        "get": {
            "operationId": "stream_events",
            "summary": "The organisation's call events, live, as Server-Sent Events",
            "description": (
                "`text/event-stream`: each event has `id` (its place in the organisation's "
                "sequence), `event` (its type) and `data` (its JSON). Resume with the "
                "Last-Event-ID header (or `last_event_id`): every later event is sent, then "
                "live ones; without it the stream starts with new events, and 0 replays "
                "all. A `: keep-alive` comment comes every EVENT_HEARTBEAT_S when idle."
            ),
            "tags": ["events"],
            "security": [{"ApiKey": []}],
            "parameters": [
                {
                    "name": "call_id",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "only this call's events",
                },
                {
                    "name": "last_event_id",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "description": "resume after this id (for clients that cannot set "
                    "headers; the Last-Event-ID header wins)",
                },
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "description": "resume after this id",
                },
            ],
            "responses": {
                "200": {
                    "description": "The event stream (until the client leaves)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _error("Last-Event-ID is not an event id of the organisation"),
                "401": _error("Missing, wrong or revoked API key"),
                "404": _error("No such call in the key's organisation"),
                "422": _error("Invalid query parameters"),
            },
        }
    }
}
