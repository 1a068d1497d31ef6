"""The management API's request and response bodies (pydantic): routes validate and
serialise with them, and the OpenAPI document is generated from them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from storage import (
    E164,
    AnalysisPlan,
    ApiKeyRecord,
    AssistantConfig,
    AssistantRecord,
    CallAnalysis,
    CallRecord,
    CallStatus,
    Direction,
    DispatchRuleRecord,
    Organization,
    PhoneNumberRecord,
    RecordingState,
    SipTrunkRecord,
    TurnRecord,
    TurnTakingConfig,
    VoicemailPlan,
    WebhookEventType,
    unstorable_key,
)


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------ calls


class CallQuery(_Input):
    assistant_id: str | None = None
    status: CallStatus | None = None
    direction: Direction | None = None
    started_after: datetime | None = Field(default=None, description="inclusive, ISO 8601")
    started_before: datetime | None = Field(default=None, description="exclusive, ISO 8601")
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(
        default=None, max_length=256, description="`next_cursor` of the previous page"
    )

    @field_validator("started_after", "started_before")
    @classmethod
    def _utc_when_unzoned(cls, value: datetime | None) -> datetime | None:
        """A time without a zone (an HTML `datetime-local` field sends one) is UTC."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class _FromRecord(BaseModel):
    """A response that publishes a storage record: its fields are the record's (declared once,
    in `storage/models.py`); a subclass only hides what is internal (`Field(exclude=True)`:
    left out of the answer and of the OpenAPI schema) and adds what the API computes."""

    # Every field is in every answer (null when unset): the schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    @classmethod
    def of(cls, record: BaseModel, **computed: object) -> Self:
        return cls.model_validate({**record.model_dump(), **computed})


def _internal() -> Any:
    """A record field the API never shows."""
    return Field(default=None, exclude=True)


class TurnOut(TurnRecord, _FromRecord):
    id: str = _internal()
    call_id: str = _internal()
    index: int = _internal()


class RecordingOut(RecordingState, _FromRecord):
    upload_id: str | None = _internal()
    egress_id: str | None = _internal()
    salvage_attempts: int = _internal()
    salvage_next_at: datetime | None = _internal()


class AnalysisOut(CallAnalysis, _FromRecord):
    pass


class CallOut(CallRecord, _FromRecord):
    org_id: str | None = _internal()
    turns: tuple[TurnRecord, ...] = _internal()
    system_prompt: str | None = _internal()
    greeting: str | None = _internal()
    served_by: str | None = _internal()
    recording: RecordingOut | None = None
    analysis: AnalysisOut | None = None
    recording_url: str | None = Field(
        default=None, description="presigned link to the complete recording (expires)"
    )


class CallDetail(CallOut):
    transcript: list[TurnOut] = Field(validation_alias=AliasChoices("transcript", "turns"))


class CallList(BaseModel):
    items: list[CallOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at end")
    total_cost: Decimal = Field(
        description="the sum of this page's calls' `cost.total` in `currency` (a decimal "
        "string); a call without a cost, or costed in another currency, counts 0"
    )
    currency: str = Field(description="the currency of `total_cost`: the price table's")


class _CallMetadata(_Input):
    """A new call's metadata (its size is checked against CALL_METADATA_* when stored)."""

    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="fills the assistant's {{placeholders}} (keys without '.' or a leading '$')",
    )

    @field_validator("metadata")
    @classmethod
    def _keys_the_store_holds(cls, metadata: dict[str, str]) -> dict[str, str]:
        for key in metadata:
            if (problem := unstorable_key(key)) is not None:
                raise ValueError(f"the key {key!r} {problem}: it cannot be stored")
        return metadata


class OutboundCallRequest(_CallMetadata):
    assistant_id: str
    to_number: E164
    from_number: E164 | None = Field(
        default=None, description="caller id; defaults to the outbound trunk's first number"
    )
    call_service: Literal["twilio", "livekit"] = "twilio"
    trunk_id: str | None = Field(
        default=None, description="LiveKit only: outbound trunk (default: the only one)"
    )
    machine_detection: bool = Field(
        default=False,
        description=(
            "Twilio only: answering-machine detection (synchronous: the call's `answered_by`;"
            " an assistant's voicemail plan screens its calls whatever this says)"
        ),
    )


class OutboundCallOut(BaseModel):
    call_id: str
    status: CallStatus
    call_service: Literal["twilio", "livekit"]
    call_sid: str
    room_name: str | None = None


class WebCallRequest(_CallMetadata):
    assistant_id: str


class WebCallOut(BaseModel):
    """What a browser needs to join the call's room with a LiveKit client SDK."""

    call_id: str
    livekit_url: str = Field(description="the LiveKit server's URL for browsers (ws:// or wss://)")
    token: str = Field(
        description="joins this room only, as the caller, publishing its microphone; "
        "valid WEB_CALL_TOKEN_TTL_S seconds to join"
    )
    room: str


# ------------------------------------------------------------------- assistants


class AssistantPatch(_Input):
    """Fields to change; those left out keep their value."""

    name: str | None = None
    system_prompt: str | None = None
    greeting: str | None = None
    stt_provider: Literal["auto", "cloud", "local"] | None = None
    llm_provider: Literal["auto", "cloud", "local"] | None = None
    tts_provider: Literal["auto", "cloud", "local"] | None = None
    llm_model: str | None = None
    voice: str | None = None
    language: str | None = None
    webhook_url: str | None = None
    inbound_lookup_url: str | None = None
    max_duration_s: int | None = None
    recording: bool | None = None
    phone_numbers: list[E164] | None = None
    # The turn-taking fields given change; the others keep their value.
    turn_taking: TurnTakingConfig | None = None
    # The analysis fields given change, the others keep theirs; null removes the plan.
    analysis: AnalysisPlan | None = None
    webhook_events: list[WebhookEventType] | None = Field(
        default=None, description="the event types sent to webhook_url (replaces the list)"
    )
    # Replaces the plan; null removes it.
    voicemail: VoicemailPlan | None = None


class AssistantOut(AssistantConfig):
    id: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: AssistantRecord) -> AssistantOut:
        return cls(
            id=record.id,
            created_at=record.created_at,
            updated_at=record.updated_at,
            **record.config.model_dump(),
        )


class AssistantList(BaseModel):
    items: list[AssistantOut]


# ----------------------------------------------------------------- organisation


class OrganizationOut(BaseModel):
    id: str
    name: str
    inbound_lookup_url: str | None = Field(
        description="asked before an inbound call is answered when its assistant sets none"
    )
    max_concurrent_calls: int | None = Field(
        description="cap on the organisation's live calls, inbound included (null: none)"
    )
    inbound_reserved_calls: int = Field(
        description="of that cap, kept for inbound calls: outbound calls (campaigns and "
        "POST /call/outbound) start only below max_concurrent_calls - inbound_reserved_calls"
    )
    created_at: datetime

    @classmethod
    def of(cls, org: Organization) -> OrganizationOut:
        return cls(
            id=org.id,
            name=org.name,
            inbound_lookup_url=org.inbound_lookup_url,
            max_concurrent_calls=org.max_concurrent_calls,
            inbound_reserved_calls=org.inbound_reserved_calls,
            created_at=org.created_at,
        )


class OrganizationPatch(_Input):
    """Fields to change; those left out keep their value (null clears the URL, and the cap:
    with no cap nothing is reserved)."""

    inbound_lookup_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2_000)
    max_concurrent_calls: int | None = Field(default=None, ge=1, le=100_000)
    inbound_reserved_calls: int | None = Field(
        default=None, ge=0, description="below max_concurrent_calls"
    )


# --------------------------------------------------------------------- API keys


class ApiKeyOut(ApiKeyRecord, _FromRecord):
    org_id: str = _internal()


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


# ---------------------------------------------------------------- SIP trunks

_TWILIO_TERMINATION = ".pstn.twilio.com"


class InboundTrunkCreate(_Input):
    name: str = Field(min_length=1, max_length=120)
    provider: Literal["twilio", "generic"] = "generic"
    numbers: list[E164] = Field(min_length=1, description="numbers this trunk receives calls for")
    allowed_addresses: list[str] = Field(
        default_factory=list, description="IPs/CIDRs that may send calls (Twilio signalling IPs)"
    )
    allowed_numbers: list[E164] = Field(default_factory=list, description="caller numbers allowed")
    auth_username: str | None = None
    auth_password: SecretStr | None = None

    @model_validator(mode="after")
    def _secured(self) -> InboundTrunkCreate:
        if (self.auth_username is None) != (self.auth_password is None):
            raise ValueError("auth_username and auth_password go together")
        if self.provider == "twilio" and not self.allowed_addresses and not self.auth_username:
            raise ValueError(
                "a Twilio Elastic SIP trunk needs allowed_addresses (Twilio's signalling IPs) "
                "or auth_username/auth_password"
            )
        return self


class OutboundTrunkCreate(_Input):
    name: str = Field(min_length=1, max_length=120)
    provider: Literal["twilio", "generic"] = "generic"
    address: str = Field(
        min_length=3,
        max_length=253,
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="SIP host[:port]; for Twilio, the trunk's termination URI",
    )
    transport: Literal["auto", "udp", "tcp", "tls"] = "auto"
    numbers: list[E164] = Field(min_length=1, description="caller ids this trunk may use")
    auth_username: str | None = None
    auth_password: SecretStr | None = None

    @model_validator(mode="after")
    def _provider_rules(self) -> OutboundTrunkCreate:
        if (self.auth_username is None) != (self.auth_password is None):
            raise ValueError("auth_username and auth_password go together")
        if self.provider == "twilio":
            if not self.address.split(":")[0].endswith(_TWILIO_TERMINATION):
                raise ValueError(
                    f"a Twilio Elastic SIP termination URI ends with {_TWILIO_TERMINATION}"
                )
            if self.auth_username is None:
                raise ValueError("Twilio termination needs auth_username/auth_password")
        return self


class TrunkOut(SipTrunkRecord, _FromRecord):
    org_id: str = _internal()


class TrunkList(BaseModel):
    items: list[TrunkOut]


class DispatchRuleCreate(_Input):
    name: str = Field(min_length=1, max_length=120)
    assistant_id: str
    trunk_ids: list[str] = Field(min_length=1, description="inbound trunks (ids from this API)")
    kind: Literal["individual", "direct"] = Field(
        default="individual", description="individual: a room per call; direct: one room"
    )
    room_prefix: str = Field(default="call-", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    room_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,100}$")
    pin: str | None = Field(default=None, pattern=r"^[0-9]{4,12}$")

    @model_validator(mode="after")
    def _room(self) -> DispatchRuleCreate:
        if self.kind == "direct" and self.room_name is None:
            raise ValueError("a direct rule needs room_name")
        return self


class DispatchRuleOut(DispatchRuleRecord, _FromRecord):
    org_id: str = _internal()


class DispatchRuleList(BaseModel):
    items: list[DispatchRuleOut]


# ---------------------------------------------------------------- phone numbers


class NumberClaim(_Input):
    number: E164 = Field(description="E.164; spaces, dashes and brackets are dropped")


class NumberOut(PhoneNumberRecord, _FromRecord):
    org_id: str | None = _internal()


class NumberList(BaseModel):
    items: list[NumberOut]
