"""The events a call produces, and their JSON bodies: what webhooks send and the event
stream streams, byte for byte.

Types (`EventType`, declared in `storage.models` so that an assistant's `webhook_events`
is checked when it is saved), in the order a call produces them:

- `call.started`: a gateway took the call's audio (the media stream or room is connected;
  the agent is about to greet). Outbound calls may report `call.status` `ringing` first.
- `call.status`: the call's progress status changed (`ringing`, `in-progress`), and once
  more with its final status (`completed`, `failed`, `busy`, `no-answer`, `canceled`) as
  soon as the call is finished, before `call.ended` (which waits for the recording).
- `call.turn`: one transcript turn was stored. A turn is stored once, when it is final: a
  caller turn at its final transcript, an agent turn when the reply ends, cut to what the
  caller heard if interrupted (`interrupted: true`). So each turn is sent once, final.
- `call.ended`: the full report (transcript, recording, latencies, usage), queued once the
  recording settled; its body is the one receivers had before events existed.
- `call.analyzed`: the post-call analysis of the call.
- `recording.ready`: the call's recording is complete in the store.

A campaign's dialer (`gateway/campaigns/`) produces two more, published like a call's (in
the organisation's sequence, so GET /events streams them; delivered to the campaign's
assistant's `webhook_url` if its `webhook_events` include them; ordered per campaign:
their `call_id` for ordering is the campaign id):

- `campaign.contact_done`: a contact reached its final outcome (no attempt is left).
- `campaign.completed`: every contact of the campaign is done (`state` completed), or,
  once a cancelled campaign's live calls ended, done or cancelled (`state` cancelled).

Every body is one JSON object: `id` (`dlv_<key>`, also the delivery id and `X-Webhook-Id`;
`key` names the fact: `<call>_<type with _>[_<n>]`), `type`, and the event's data.
Except `call.ended` (kept byte-compatible, see `call_ended_body`), bodies also carry
`created_at` (ISO 8601) and `call`, the call's summary:
`{"id", "assistant_id", "direction", "from_number", "to_number", "transport"}`.

    call.started     {id, type, created_at, call: summary + {status, started_at, metadata}}
    call.status      {id, type, created_at, call, status}
    call.turn        {id, type, created_at, call, turn: {index, speaker, text, start_ms,
                      end_ms, interrupted, latency_ms}}
    call.ended       {id, type, call: {...the full report...}}
    call.analyzed    {id, type, created_at, call, analysis: {...} | null}
    recording.ready  {id, type, created_at, call, recording: {status, kind, bucket, key,
                      location, url, size_bytes, duration_s, salvaged, error}}

Campaign events carry `campaign` instead of `call`: `{"id", "name", "assistant_id",
"call_service"}`; keys are `<campaign>_campaign_contact_done_<n>` and
`<campaign>_campaign_completed`:

    campaign.contact_done  {id, type, created_at, campaign, contact: {n, to_number,
                            metadata, outcome, attempts, call_ids}}
                            (outcome: completed, voicemail, busy, no-answer, failed,
                            canceled, do-not-call; call_ids in attempt order)
    campaign.completed     {id, type, created_at, campaign, state, counts: {total,
                            by_status, by_outcome}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, get_args

from storage import (
    DEFAULT_WEBHOOK_EVENTS,
    CallRecord,
    CallStatus,
    RecordingState,
    TurnRecord,
    WebhookEventType,
)

EventType = WebhookEventType
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(WebhookEventType)
DEFAULT_EVENTS: Final[tuple[EventType, ...]] = DEFAULT_WEBHOOK_EVENTS

CALL_STARTED: Final = "call.started"
CALL_STATUS: Final = "call.status"
CALL_TURN: Final = "call.turn"
CALL_ENDED: Final = "call.ended"
CALL_ANALYZED: Final = "call.analyzed"
RECORDING_READY: Final = "recording.ready"
CAMPAIGN_CONTACT_DONE: Final = "campaign.contact_done"
CAMPAIGN_COMPLETED: Final = "campaign.completed"


def event_key(call_id: str, type: EventType, part: str | int | None = None) -> str:
    """The name of one fact of a call: `<call>_call_turn_3`, `<call>_call_status_ringing`,
    `<call>_call_ended`. The same fact always has the same key (published once)."""
    key = f"{call_id}_{type.replace('.', '_')}"
    return key if part is None else f"{key}_{part}"


def delivery_id(key: str) -> str:
    """The delivery id (and body `id`) of the event `key` names: `dlv_<key>`."""
    return f"dlv_{key}"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dumps(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _recording(state: RecordingState | None, url: str | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "status": state.status,
        "kind": state.kind,
        "bucket": state.bucket,
        "key": state.key,
        "location": state.location,
        "url": url,
        "size_bytes": state.size_bytes,
        "duration_s": state.duration_s,
        "salvaged": state.salvaged,
        "error": state.error,
    }


def call_summary(call: CallRecord) -> dict[str, Any]:
    """What every event but `call.ended` says of its call (facts that do not change)."""
    return {
        "id": call.id,
        "assistant_id": call.assistant_id,
        "direction": call.direction.value,
        "from_number": call.from_number,
        "to_number": call.to_number,
        "transport": call.transport,
    }


def _event(type: EventType, call: CallRecord, *, event_id: str, at: datetime) -> dict[str, Any]:
    return {"id": event_id, "type": type, "created_at": at.isoformat(), "call": call_summary(call)}


def call_started_body(call: CallRecord, *, event_id: str, at: datetime) -> str:
    event = _event(CALL_STARTED, call, event_id=event_id, at=at)
    event["call"] |= {
        "status": call.status.value,
        "started_at": _time(call.started_at),
        "metadata": dict(call.metadata),
    }
    return _dumps(event)


def call_status_body(call: CallRecord, status: CallStatus, *, event_id: str, at: datetime) -> str:
    return _dumps(_event(CALL_STATUS, call, event_id=event_id, at=at) | {"status": status.value})


def call_turn_body(call: CallRecord, turn: TurnRecord, *, event_id: str, at: datetime) -> str:
    data = {
        "index": turn.index,
        "speaker": turn.speaker,
        "text": turn.text,
        "start_ms": turn.start_ms,
        "end_ms": turn.end_ms,
        "interrupted": turn.interrupted,
        "latency_ms": dict(turn.latency) if turn.latency else None,
    }
    return _dumps(_event(CALL_TURN, call, event_id=event_id, at=at) | {"turn": data})


def call_analyzed_body(
    call: CallRecord, analysis: Mapping[str, Any] | None, *, event_id: str, at: datetime
) -> str:
    """The `call.analyzed` body: `analysis` as stored on the call (status, summary, data,
    success, usage, ...), JSON-ready (times as ISO strings), or null when there is none."""
    event = _event(CALL_ANALYZED, call, event_id=event_id, at=at)
    event["analysis"] = dict(analysis) if analysis is not None else None
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def recording_ready_body(
    call: CallRecord, recording: RecordingState, url: str | None, *, event_id: str, at: datetime
) -> str:
    event = _event(RECORDING_READY, call, event_id=event_id, at=at)
    event["recording"] = _recording(recording, url)
    return _dumps(event)


def campaign_summary(
    *, campaign_id: str, name: str, assistant_id: str, call_service: str
) -> dict[str, Any]:
    """What every campaign event says of its campaign."""
    return {
        "id": campaign_id,
        "name": name,
        "assistant_id": assistant_id,
        "call_service": call_service,
    }


def campaign_contact_done_body(
    campaign: Mapping[str, Any],
    *,
    n: int,
    to_number: str,
    metadata: Mapping[str, str],
    outcome: str,
    attempts: int,
    call_ids: tuple[str, ...],
    event_id: str,
    at: datetime,
) -> str:
    return _dumps(
        {
            "id": event_id,
            "type": CAMPAIGN_CONTACT_DONE,
            "created_at": at.isoformat(),
            "campaign": dict(campaign),
            "contact": {
                "n": n,
                "to_number": to_number,
                "metadata": dict(metadata),
                "outcome": outcome,
                "attempts": attempts,
                "call_ids": list(call_ids),
            },
        }
    )


def campaign_completed_body(
    campaign: Mapping[str, Any],
    *,
    state: str,
    total: int,
    by_status: Mapping[str, int],
    by_outcome: Mapping[str, int],
    event_id: str,
    at: datetime,
) -> str:
    return _dumps(
        {
            "id": event_id,
            "type": CAMPAIGN_COMPLETED,
            "created_at": at.isoformat(),
            "campaign": dict(campaign),
            "state": state,
            "counts": {
                "total": total,
                "by_status": dict(by_status),
                "by_outcome": dict(by_outcome),
            },
        }
    )


def call_ended_body(
    call: CallRecord,
    *,
    delivery_id: str,
    recording: RecordingState | None = None,
    recording_url: str | None = None,
) -> str:
    """The JSON body of the `call.ended` event of `call` (with its turns): the same fields,
    in the same order, as before other events existed (no `created_at`)."""
    event: dict[str, Any] = {
        "id": delivery_id,
        "type": CALL_ENDED,
        "call": {
            "id": call.id,
            "assistant_id": call.assistant_id,
            "direction": call.direction.value,
            "from_number": call.from_number,
            "to_number": call.to_number,
            "transport": call.transport,
            "call_sid": call.call_sid,
            "status": call.status.value,
            "started_at": _time(call.started_at),
            "ended_at": _time(call.ended_at),
            "duration_s": call.duration_s,
            "end_reason": call.end_reason,
            "recording_url": recording_url,
            "recording": _recording(recording, recording_url),
            "metadata": dict(call.metadata),
            "transcript": [
                {
                    "speaker": t.speaker,
                    "text": t.text,
                    "start_ms": t.start_ms,
                    "end_ms": t.end_ms,
                    "interrupted": t.interrupted,
                    "latency_ms": dict(t.latency) if t.latency else None,
                }
                for t in call.turns
            ],
            "latency_p50_ms": dict(call.latency_p50) if call.latency_p50 else None,
            "latency_p95_ms": dict(call.latency_p95) if call.latency_p95 else None,
            "usage": call.usage.model_dump(mode="json") if call.usage else None,
            "cost": call.cost.model_dump(mode="json") if call.cost else None,
        },
    }
    return _dumps(event)
