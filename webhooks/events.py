"""The end-call event: everything a CRM needs about a finished call, as one JSON body."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from storage import CallRecord, RecordingState

CALL_ENDED = "call.ended"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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


def call_ended_body(
    call: CallRecord,
    *,
    delivery_id: str,
    recording: RecordingState | None = None,
    recording_url: str | None = None,
) -> str:
    """The JSON body of the `call.ended` event of `call` (with its turns)."""
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
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
