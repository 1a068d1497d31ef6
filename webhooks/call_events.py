"""`CallEvents`: publishes a call's events: each stored once in its organisation's event
sequence (what the event stream reads), then, if the call's assistant sends that type to a
`webhook_url`, queued as a delivery of the durable outbox (signed, retried, in order per
call: `storage/deliveries.py`).

Every fact has a key (`webhooks.events.event_key`): publishing it again (a retried write,
a restarted gateway, another gateway's outbox) returns the event stored before and queues
no second delivery. A gateway that dies between storing an event and queueing its delivery
queues it when the fact is published again (the owed report, a retried call write); an
event published only once by a process that then died keeps its stored event but may go
without its delivery.

Where each method is called:
- `started`: `CallLifecycle.take()` (queued on the call's writes).
- `status`: `CallLifecycle.answer()` (in-progress, queued behind its status write), the end
  of the lifecycle (the final status, once the call is finished), the Twilio status
  callback (progress it stored, or the final status of a call it finished).
- `turn`: the call's transcript, queued behind each turn's write (`CallTranscript`).
- `ended`: `WebhookOutbox.queue_owed_reports` (the report, once the recording settled).
- `analyzed`: the analysis worker, once an analysis is stored.
- `recording_ready`: `CallLifecycle` once the gateway's recorder completed the upload, the
  LiveKit `egress_ended` webhook, and the outbox when it settles (salvages) a recording.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from storage import (
    AssistantRepository,
    CallRecord,
    CallStatus,
    EventRecord,
    EventRepository,
    RecordingState,
    TurnRecord,
    WebhookRepository,
)
from webhooks.events import (
    CALL_ANALYZED,
    CALL_ENDED,
    CALL_STARTED,
    CALL_STATUS,
    CALL_TURN,
    RECORDING_READY,
    EventType,
    call_analyzed_body,
    call_ended_body,
    call_started_body,
    call_status_body,
    call_turn_body,
    delivery_id,
    event_key,
    recording_ready_body,
)

log = logging.getLogger(__name__)


class RecordingLinks(Protocol):
    """A link to a complete recording (the gateway's S3 side)."""

    def url(self, state: RecordingState) -> str | None: ...


class CallEvents:
    """The one publisher of call events of a gateway process (see the module docstring)."""

    def __init__(
        self,
        *,
        events: EventRepository,
        webhooks: WebhookRepository,
        assistants: AssistantRepository,
        recordings: RecordingLinks | None = None,
        on_published: Callable[[EventRecord], None] | None = None,
        on_queued: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._events = events
        self._webhooks = webhooks
        self._assistants = assistants
        self._recordings = recordings
        self._on_published = on_published  # after each stored event (the stream's readers)
        self._on_queued = on_queued  # after each queued delivery (wakes the outbox)
        self._clock = clock

    async def started(self, call: CallRecord) -> EventRecord:
        """A gateway took the call's audio."""
        return await self.publish(
            call, CALL_STARTED, body=lambda id, at: call_started_body(call, event_id=id, at=at)
        )

    async def status(self, call: CallRecord, status: CallStatus) -> EventRecord:
        """The call's status became `status` (once per status and call)."""
        return await self.publish(
            call,
            CALL_STATUS,
            part=status.value,
            body=lambda id, at: call_status_body(call, status, event_id=id, at=at),
        )

    async def turn(self, call: CallRecord, turn: TurnRecord) -> EventRecord:
        """A transcript turn was stored (final: turns are stored once, when said)."""
        return await self.publish(
            call,
            CALL_TURN,
            part=turn.index,
            body=lambda id, at: call_turn_body(call, turn, event_id=id, at=at),
        )

    async def ended(
        self, call: CallRecord, *, recording: RecordingState | None, recording_url: str | None
    ) -> bool:
        """The call's report (`call` read with its turns, after its recording settled).
        True if its delivery was queued now (False: none is owed, or it was before)."""
        _, queued = await self._publish(
            call,
            CALL_ENDED,
            body=lambda id, at: call_ended_body(
                call, delivery_id=id, recording=recording, recording_url=recording_url
            ),
        )
        return queued

    async def analyzed(self, call: CallRecord) -> None:
        """The call's analysis was stored (`call` read after it)."""
        analysis = _analysis_of(call)
        await self.publish(
            call,
            CALL_ANALYZED,
            body=lambda id, at: call_analyzed_body(call, analysis, event_id=id, at=at),
        )

    async def recording_ready(self, call: CallRecord, state: RecordingState) -> EventRecord | None:
        """The call's recording is complete (None, nothing published: it is not)."""
        if state.status != "complete":
            return None
        url = self._recordings.url(state) if self._recordings is not None else None
        return await self.publish(
            call,
            RECORDING_READY,
            body=lambda id, at: recording_ready_body(call, state, url, event_id=id, at=at),
        )

    async def publish(
        self,
        call: CallRecord,
        type: EventType,
        *,
        body: Callable[[str, datetime], str],
        part: str | int | None = None,
    ) -> EventRecord:
        """Store the event (`body(event id, time)`; once per key), tell `on_published`, and
        queue its delivery if the call's assistant sends `type` to a webhook."""
        record, _ = await self._publish(call, type, body=body, part=part)
        return record

    async def _publish(
        self,
        call: CallRecord,
        type: EventType,
        *,
        body: Callable[[str, datetime], str],
        part: str | int | None = None,
    ) -> tuple[EventRecord, bool]:
        key = event_key(call.id, type, part)
        event_id = delivery_id(key)
        at = self._clock()
        record = await self._events.publish(
            key=key, org_id=call.org_id, call_id=call.id, type=type, body=body(event_id, at), at=at
        )
        if self._on_published is not None:
            try:
                self._on_published(record)
            except Exception:  # a listener's fault is not the event's: it is stored
                log.exception("on_published failed", extra={"call_id": call.id})
        return record, await self._queue_delivery(call, record, event_id)

    async def _queue_delivery(self, call: CallRecord, record: EventRecord, event_id: str) -> bool:
        if call.assistant_id is None:
            return False
        assistant = await self._assistants.get_any(call.assistant_id)
        if assistant is None or not assistant.config.webhook_url:
            return False
        if record.type not in assistant.config.webhook_events:
            return False
        queued = await self._webhooks.enqueue(
            delivery_id=event_id,
            org_id=call.org_id,
            call_id=call.id,
            event=record.type,
            url=assistant.config.webhook_url,
            body=record.body,
            now=self._clock(),
            seq=record.seq,
        )
        if queued:
            log.info(
                "webhook event queued",
                extra={"call_id": call.id, "event": record.type, "seq": record.seq},
            )
            if self._on_queued is not None:
                self._on_queued()
        return queued


def _analysis_of(call: CallRecord) -> Mapping[str, Any] | None:
    """The call's stored analysis as JSON-ready data (`CallRecord.analysis`, added with the
    analysis worker; absent: None)."""
    analysis: object = getattr(call, "analysis", None)
    if analysis is None:
        return None
    dump = getattr(analysis, "model_dump", None)
    if callable(dump):
        data = dump(mode="json")
        return data if isinstance(data, dict) else None
    return analysis if isinstance(analysis, Mapping) else None
