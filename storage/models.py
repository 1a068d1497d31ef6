"""Typed values that leave `storage/` (beanie documents never do)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Speaker = Literal["caller", "agent"]


class CallStatus(enum.StrEnum):
    """Twilio's call statuses; the last five are final."""

    QUEUED = "queued"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    FAILED = "failed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    CANCELED = "canceled"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


@dataclass(frozen=True, slots=True)
class NewCall:
    transport: str
    call_sid: str
    from_number: str
    to_number: str
    direction: Direction
    stream_sid: str | None = None
    assistant_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    id: str
    call_id: str
    index: int
    speaker: Speaker
    text: str
    start_ms: float
    end_ms: float
    interrupted: bool
    created_at: datetime
    latency: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    transport: str
    call_sid: str
    stream_sid: str | None
    from_number: str
    to_number: str
    direction: Direction
    assistant_id: str | None
    metadata: dict[str, str]
    status: CallStatus
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    end_reason: str | None
    turns: tuple[TurnRecord, ...] = ()
    latency_p50: Mapping[str, float] | None = None
    latency_p95: Mapping[str, float] | None = None
    usage: Mapping[str, int] | None = None
