"""Request and response bodies of the campaign and do-not-call routes (pydantic): the
schedule's checks (an IANA zone, days, an "HH:MM" pair, a window that can open) live here,
so a schedule that can never open is a 422 like any other invalid field."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal, Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from gateway.campaigns.schedule import DAYS, can_open, parse_hour
from gateway.campaigns.schedule import zone as schedule_zone
from storage import (
    E164,
    CampaignCounts,
    CampaignRecord,
    CampaignSpec,
    CampaignState,
    ContactRecord,
    ContactStatus,
    Outcome,
    RetryPolicy,
    Schedule,
)

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
RetryOn = Literal["busy", "no-answer", "failed", "voicemail"]
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")
MAX_BACKOFF_S = 7 * 24 * 3600


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone `name` (None: there is none of that name)."""
    try:
        return schedule_zone(name)
    except ValueError:
        return None


def _every_day() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleIn(_Input):
    """When the campaign may dial. Times without an offset are read in `time_zone`."""

    start_at: datetime | None = Field(default=None, description="ISO 8601; null: now")
    end_at: datetime | None = Field(default=None, description="ISO 8601; null: no end")
    time_zone: str = Field(
        default="UTC", max_length=64, description="IANA zone of days and hours (e.g. Europe/Paris)"
    )
    days: list[Day] = Field(default_factory=_every_day, max_length=7)
    hours: tuple[str, str] = Field(
        default=("00:00", "24:00"),
        description='local calling hours ["HH:MM", "HH:MM"] ("24:00": midnight; an end '
        "before the start runs overnight)",
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if zone(value) is None:
            raise ValueError(f"{value!r} is not an IANA time zone")
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: tuple[str, str]) -> tuple[str, str]:
        for hhmm in value:
            if not _HHMM.match(hhmm):
                raise ValueError(f"{hhmm!r} is not a time of day HH:MM")
        if parse_hour(value[0]) is None:
            raise ValueError("the hours cannot start at 24:00")
        if value[0] == value[1]:
            raise ValueError("the hours never open: the start and the end are the same")
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[Day]) -> list[Day]:
        if not value:
            raise ValueError("no days: the campaign would never open")
        return sorted(set(value), key=DAYS.index)

    @model_validator(mode="after")
    def _window(self) -> Self:
        tz = zone(self.time_zone)
        assert tz is not None
        if self.start_at is not None and self.start_at.tzinfo is None:
            self.start_at = self.start_at.replace(tzinfo=tz)
        if self.end_at is not None and self.end_at.tzinfo is None:
            self.end_at = self.end_at.replace(tzinfo=tz)
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at is not after start_at: the campaign would never open")
        if not can_open(self.record(), now=datetime.now(UTC)):
            raise ValueError(
                "the schedule never opens: no calling hours on its days fall between now "
                "(or start_at) and end_at"
            )
        return self

    def record(self) -> Schedule:
        return Schedule(
            time_zone=self.time_zone,
            days=tuple(self.days),
            hours=self.hours,
            start_at=self.start_at.astimezone(UTC) if self.start_at else None,
            end_at=self.end_at.astimezone(UTC) if self.end_at else None,
        )


class RetryIn(_Input):
    on: list[RetryOn] = Field(default_factory=list, description="outcomes tried again")
    max_attempts: int = Field(default=1, ge=1, le=10, description="attempts in all, the first too")
    backoff_s: float = Field(default=300, ge=0, le=MAX_BACKOFF_S, description="between attempts")

    def record(self) -> RetryPolicy:
        return RetryPolicy(
            on=tuple(Outcome(o) for o in dict.fromkeys(self.on)),
            max_attempts=self.max_attempts,
            backoff_s=self.backoff_s,
        )


class CampaignCreate(_Input):
    name: str = Field(min_length=1, max_length=120)
    assistant_id: str = Field(max_length=64)
    call_service: Literal["twilio", "livekit"] = "twilio"
    from_number: E164 | None = Field(
        default=None,
        description="caller id, registered to the organisation (Twilio: required; "
        "LiveKit: defaults to the trunk's first number)",
    )
    trunk_id: str | None = Field(
        default=None,
        max_length=64,
        description="LiveKit only: an outbound trunk (default: the organisation's only one)",
    )
    schedule: ScheduleIn = Field(default_factory=ScheduleIn)
    max_concurrency: int = Field(default=1, ge=1, le=100, description="live calls at once")
    calls_per_second: float = Field(default=1.0, gt=0, le=10, description="dial rate")
    retry: RetryIn = Field(default_factory=RetryIn)

    @model_validator(mode="after")
    def _carrier(self) -> Self:
        if self.call_service == "twilio":
            if self.from_number is None:
                raise ValueError("from_number is required for call_service=twilio")
            if self.trunk_id is not None:
                raise ValueError("trunk_id is for call_service=livekit only")
        return self

    def spec(self, *, from_number: str | None, trunk_id: str | None) -> CampaignSpec:
        return CampaignSpec(
            name=self.name,
            assistant_id=self.assistant_id,
            call_service=self.call_service,
            from_number=from_number,
            trunk_id=trunk_id,
            schedule=self.schedule.record(),
            max_concurrency=self.max_concurrency,
            calls_per_second=self.calls_per_second,
            retry=self.retry.record(),
        )


class ScheduleOut(BaseModel):
    start_at: datetime | None
    end_at: datetime | None
    time_zone: str
    days: list[str]
    hours: tuple[str, str]


class RetryOut(BaseModel):
    on: list[Outcome]
    max_attempts: int
    backoff_s: float


class CountsOut(BaseModel):
    total: int
    by_status: dict[str, int] = Field(description="pending, calling, done, cancelled")
    by_outcome: dict[str, int] = Field(description="of each contact's last finished attempt")


class CampaignOut(BaseModel):
    id: str
    name: str
    assistant_id: str
    call_service: Literal["twilio", "livekit"]
    from_number: str | None
    trunk_id: str | None
    schedule: ScheduleOut
    max_concurrency: int
    calls_per_second: float
    retry: RetryOut
    state: CampaignState
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    contact_count: int = Field(description="contacts added (committed uploads)")
    counts: CountsOut | None = Field(
        default=None, description="GET /campaigns/{id} only: contacts by status and outcome"
    )

    @classmethod
    def of(cls, record: CampaignRecord, counts: CampaignCounts | None = None) -> CampaignOut:
        s = record.schedule
        return cls(
            id=record.id,
            name=record.name,
            assistant_id=record.assistant_id,
            call_service=record.call_service,
            from_number=record.from_number,
            trunk_id=record.trunk_id,
            schedule=ScheduleOut(
                start_at=s.start_at,
                end_at=s.end_at,
                time_zone=s.time_zone,
                days=list(s.days),
                hours=s.hours,
            ),
            max_concurrency=record.max_concurrency,
            calls_per_second=record.calls_per_second,
            retry=RetryOut(
                on=list(record.retry.on),
                max_attempts=record.retry.max_attempts,
                backoff_s=record.retry.backoff_s,
            ),
            state=record.state,
            created_at=record.created_at,
            updated_at=record.updated_at,
            completed_at=record.completed_at,
            contact_count=record.contact_count,
            counts=(
                CountsOut(
                    total=counts.total, by_status=counts.by_status, by_outcome=counts.by_outcome
                )
                if counts is not None
                else None
            ),
        )


class CampaignList(BaseModel):
    items: list[CampaignOut]


class ContactIn(_Input):
    to_number: str = Field(description="E.164; spaces, dots, dashes and brackets are dropped")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="values of the assistant's {{placeholders}}"
    )
    time_zone: str | None = Field(
        default=None, description="IANA zone of this contact's calling hours"
    )


class ContactUpload(RootModel[list[ContactIn]]):
    """JSON form: an array of contacts, rows counted from 0 (or send `text/csv`: a header
    row naming `to_number`, optionally `time_zone`, every other column a metadata variable;
    rows counted as lines, the header being line 1)."""


class ContactsAdded(BaseModel):
    added: int
    total: int = Field(description="the campaign's contacts now")


class ContactQuery(_Input):
    status: ContactStatus | None = None
    after: int = Field(default=0, ge=0, description="`next_after` of the previous page")
    limit: int = Field(default=100, ge=1, le=1000)


class ContactOut(BaseModel):
    n: int = Field(description="the contact's id in its campaign: 1, 2, ... in upload order")
    to_number: str
    metadata: dict[str, str]
    time_zone: str | None
    status: ContactStatus
    attempts: int
    next_at: datetime | None
    outcome: Outcome | None
    call_ids: list[str]
    updated_at: datetime | None

    @classmethod
    def of(cls, record: ContactRecord) -> ContactOut:
        return cls(
            n=record.n,
            to_number=record.to_number,
            metadata=record.metadata,
            time_zone=record.time_zone,
            status=record.status,
            attempts=record.attempts,
            next_at=record.next_at,
            outcome=record.outcome,
            call_ids=list(record.call_ids),
            updated_at=record.updated_at,
        )


class ContactPage(BaseModel):
    items: list[ContactOut]
    next_after: int | None = Field(description="pass as `after` for the next page; null at end")


# ------------------------------------------------------------------ do-not-call


class DoNotCallAdd(_Input):
    numbers: list[str] = Field(
        min_length=1, max_length=10_000, description="E.164; spaces, dashes, brackets dropped"
    )


class DoNotCallAdded(BaseModel):
    added: int = Field(description="numbers that were not on the list already")


class DoNotCallQuery(_Input):
    after: str | None = Field(default=None, max_length=20, description="`next_after` of before")
    limit: int = Field(default=100, ge=1, le=1000)


class DoNotCallPage(BaseModel):
    items: list[str]
    next_after: str | None
