"""Typed values that leave `storage/` (beanie documents never do)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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
    org_id: str | None
    transport: str
    call_sid: str
    from_number: str
    to_number: str
    direction: Direction
    stream_sid: str | None = None
    assistant_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    status: CallStatus = CallStatus.RINGING
    system_prompt: str | None = None
    greeting: str | None = None


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


RecordingKind = Literal["gateway", "egress"]
RecordingStatus = Literal["recording", "complete", "failed"]


@dataclass(frozen=True, slots=True)
class RecordingState:
    """Where a call's recording is and how far it got.

    `gateway`: the gateway's own stereo recorder (Twilio streams), a multipart upload to
    `bucket`/`key` while the call runs (`upload_id` until it is completed). `egress`: a
    LiveKit Egress (`egress_id`) whose ended webhook gives the final `location`.
    `salvaged` marks a recording completed from the parts a crashed gateway had uploaded.
    """

    kind: RecordingKind
    status: RecordingStatus
    bucket: str | None = None
    key: str | None = None
    upload_id: str | None = None
    egress_id: str | None = None
    location: str | None = None
    size_bytes: int | None = None
    duration_s: float | None = None
    error: str | None = None
    salvaged: bool = False


@dataclass(frozen=True, slots=True)
class CallRecord:
    id: str
    org_id: str | None
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
    system_prompt: str | None = None
    greeting: str | None = None
    answered_by: str | None = None
    recording: RecordingState | None = None
    served_by: str | None = None  # the gateway serving its audio, while it is live


@dataclass(frozen=True, slots=True)
class CallFilter:
    """What `list_calls` narrows to; `None` means any."""

    org_id: str | None = None
    assistant_id: str | None = None
    status: CallStatus | None = None
    direction: Direction | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class CallPage:
    items: list[CallRecord]
    next_cursor: str | None


E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]
ProviderChoice = Literal["auto", "cloud", "local"]


class AssistantConfig(BaseModel):
    """What an operator sets on an assistant (validated; the same model the API publishes).

    `system_prompt` and `greeting` may hold `{{placeholders}}`, filled from the call's
    metadata when a call starts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=120)
    system_prompt: str = Field(min_length=1, max_length=20_000)
    greeting: str = Field(default="", max_length=2_000)
    stt_provider: ProviderChoice = "auto"
    llm_provider: ProviderChoice = "auto"
    tts_provider: ProviderChoice = "auto"
    llm_model: str | None = Field(default=None, max_length=120, description="chat model name")
    voice: str | None = Field(
        default=None, max_length=120, description="Cartesia voice id, or espeak-ng voice"
    )
    language: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    webhook_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2_000)
    max_duration_s: int = Field(default=1800, ge=10, le=4 * 3600)
    recording: bool = True
    phone_numbers: list[E164] = Field(
        default_factory=list, description="inbound Twilio numbers answered by this assistant"
    )


@dataclass(frozen=True, slots=True)
class AssistantRecord:
    id: str
    org_id: str
    config: AssistantConfig
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    is_default: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    org_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


TrunkKind = Literal["inbound", "outbound"]
SipProvider = Literal["twilio", "generic"]


@dataclass(frozen=True, slots=True)
class SipTrunkRecord:
    id: str
    org_id: str
    livekit_id: str
    kind: TrunkKind
    provider: SipProvider
    name: str
    numbers: tuple[str, ...]
    address: str | None
    transport: str | None
    allowed_addresses: tuple[str, ...]
    allowed_numbers: tuple[str, ...]
    auth_username: str | None
    has_password: bool
    created_at: datetime


DispatchKind = Literal["individual", "direct"]


@dataclass(frozen=True, slots=True)
class DispatchRuleRecord:
    id: str
    org_id: str
    livekit_id: str
    name: str
    assistant_id: str
    trunk_ids: tuple[str, ...]
    kind: DispatchKind
    room_prefix: str | None
    room_name: str | None
    has_pin: bool
    created_at: datetime
