"""`CallEvents`: publishes a call's events: each stored once in its organisation's event
sequence (what the event stream reads), then, if the call's assistant sends that type to a
`webhook_url`, queued as a delivery of the durable outbox (signed, retried, in order per
call: `storage/deliveries.py`).

Every fact has a key (`webhooks.events.event_key`): publishing it again (a retried write,
a restarted gateway, another gateway's outbox) returns the event stored before, queues its
delivery if that is missing, and never a second one. A gateway that dies (or a write that
times out) between storing an event and queueing its delivery is repaired by the call's
report round: `before_report` publishes again, before `call.ended`, each earlier event of a
type the assistant sends to a webhook whose delivery is missing, and the final status.

`call.analyzed` goes out after `call.ended`: it is published only once the call's report
is queued (`report_pending` cleared, after the `call.ended` delivery was queued), else
`EventNotDue` at once (the analysis stays owed, stored; the outbox publishes it right after
it queued the report, and the analyst's poll finds any left over).

Where each method is called:
- `started`: `CallLifecycle.take()` (queued on the call's writes).
- `status`: `CallLifecycle.answer()` (in-progress, queued behind its status write), the end
  of the lifecycle (the final status, once the call is finished: it only speeds it up, the
  report round publishes it before `call.ended`), the Twilio status callback (progress it
  stored, or the final status of a call it finished).
- `turn`: the call's transcript, queued behind each turn's write (`CallTranscript`).
- `before_report`, `ended`: `WebhookOutbox.queue_owed_reports` (the report, once the
  recording settled).
- `analyzed`: the analysis worker, once an analysis is stored; the outbox, once it queued
  the report of a call whose analysis was stored before.
- `recording_ready`: `CallLifecycle` once the gateway's recorder completed the upload, the
  LiveKit `egress_ended` webhook, and the outbox when it settles (salvages) a recording.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from storage import (
    AssistantConfig,
    AssistantRepository,
    CallRecord,
    CallStatus,
    EventRecord,
    EventRepository,
    RecordingState,
    TurnRecord,
    WebhookRepository,
)
from webhooks.errors import EventNotDue
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

# Statuses a call has before it is finished (the report round publishes the final one).
_UNFINISHED = frozenset({CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS})


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

    async def turn(self, call: CallRecord, turn: TurnRecord, *, fresh: bool = False) -> EventRecord:
        """A transcript turn was stored (final: turns are stored once, when said). `fresh`:
        just stored by this process, so its event is not looked for first."""
        return await self.publish(
            call,
            CALL_TURN,
            part=turn.index,
            body=lambda id, at: call_turn_body(call, turn, event_id=id, at=at),
            fresh=fresh,
        )

    async def before_report(self, call: CallRecord) -> None:
        """What must be published before the call's report (`call` read with its turns,
        finished): again, each earlier event (`call.started`, `call.status` in-progress,
        every `call.turn`) of a type the call's assistant sends to a webhook whose delivery
        is missing (a gateway died, or a write timed out, between storing the event and
        queueing it; one `_id` lookup per event when none is), then the final status."""
        config = await self._webhook_config(call)
        sends = set(config.webhook_events) if config is not None else set()
        owed: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if CALL_STARTED in sends:
            owed.append((event_key(call.id, CALL_STARTED), lambda: self.started(call)))
        if CALL_STATUS in sends and (call.status is CallStatus.COMPLETED or call.turns):
            # It was answered (the lifecycle publishes in-progress when it is).
            owed.append(
                (
                    event_key(call.id, CALL_STATUS, CallStatus.IN_PROGRESS.value),
                    lambda: self.status(call, CallStatus.IN_PROGRESS),
                )
            )
        if CALL_TURN in sends:
            for turn in call.turns:
                owed.append(
                    (
                        event_key(call.id, CALL_TURN, turn.index),
                        functools.partial(self.turn, call, turn),
                    )
                )
        queued = await asyncio.gather(*(self._webhooks.queued(delivery_id(key)) for key, _ in owed))
        for (key, publish), done in zip(owed, queued, strict=True):
            if not done:  # in order: an event never stored takes its place now
                log.warning("event republished", extra={"call_id": call.id, "key": key})
                await publish()
        if call.status not in _UNFINISHED:
            await self.status(call, call.status)

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
        """The call's analysis was stored (`call` read after it). Published once the call's
        report is queued (so its delivery goes out after `call.ended`'s), else
        `EventNotDue` at once; once per stored result: a re-run's result is an event of its
        own."""
        if await self._webhooks.report_pending(call.id):
            raise EventNotDue(f"the report of {call.id} is not queued yet")
        analysis = _analysis_of(call)
        done = call.analysis.completed_at if call.analysis is not None else None
        await self.publish(
            call,
            CALL_ANALYZED,
            part=int(done.timestamp() * 1000) if done is not None else None,
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
        fresh: bool = False,
    ) -> EventRecord:
        """Store the event (`body(event id, time)`; once per key), tell `on_published`, and
        queue its delivery if the call's assistant sends `type` to a webhook. `fresh`: see
        `EventRepository.publish`."""
        record, _ = await self._publish(call, type, body=body, part=part, fresh=fresh)
        return record

    async def _publish(
        self,
        call: CallRecord,
        type: EventType,
        *,
        body: Callable[[str, datetime], str],
        part: str | int | None = None,
        fresh: bool = False,
    ) -> tuple[EventRecord, bool]:
        key = event_key(call.id, type, part)
        event_id = delivery_id(key)
        at = self._clock()
        record = await self._events.publish(
            key=key,
            org_id=call.org_id,
            call_id=call.id,
            type=type,
            body=body(event_id, at),
            at=at,
            fresh=fresh,
        )
        if self._on_published is not None:
            try:
                self._on_published(record)
            except Exception:  # a listener's fault is not the event's: it is stored
                log.exception("on_published failed", extra={"call_id": call.id})
        return record, await self._queue_delivery(call, record, event_id)

    async def _webhook_config(self, call: CallRecord) -> AssistantConfig | None:
        """The call's assistant's config if it sends events to a webhook."""
        if call.assistant_id is None:
            return None
        assistant = await self._assistants.get_any(call.assistant_id)
        if assistant is None or not assistant.config.webhook_url:
            return None
        return assistant.config

    async def _queue_delivery(self, call: CallRecord, record: EventRecord, event_id: str) -> bool:
        """Queue the event's delivery if the assistant sends its type (and it has none yet:
        an event stored before, whose delivery a dead process never queued, gets it now)."""
        config = await self._webhook_config(call)
        if config is None or config.webhook_url is None or record.type not in config.webhook_events:
            return False
        queued = await self._webhooks.enqueue(
            delivery_id=event_id,
            org_id=call.org_id,
            call_id=call.id,
            event=record.type,
            url=config.webhook_url,
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
    """The call's stored analysis as JSON-ready data."""
    return call.analysis.model_dump(mode="json") if call.analysis is not None else None
