"""Beanie documents: the stored shape of every record (they never leave `storage/`).

Turns live in their own collection so each is one insert when it happens (nothing
read-modify-written, nothing lost in a crash) and cutting an interrupted turn is one update.
Everything here runs on FerretDB 1.24 (SQLite) as on MongoDB: no transactions, `$lookup`,
TTL, text or partial indexes; plain and unique indexes only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import pymongo
from beanie import Document
from pydantic import Field


class CallDocument(Document):
    org_id: str | None = None
    transport: str
    call_sid: str
    stream_sid: str | None = None
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"
    assistant_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    status: str = "ringing"
    started_at: datetime
    ended_at: datetime | None = None
    duration_s: float | None = None
    end_reason: str | None = None
    latency_p50: dict[str, float] | None = None
    latency_p95: dict[str, float] | None = None
    # A `CallUsage` (old calls: `{prompt_tokens, completion_tokens}`) and a `CallCost`
    # (decimals as strings), both written by the call's finish.
    usage: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    # The assistant's prompt and greeting with the call's placeholders filled, fixed when
    # the call is placed or answered (whichever gateway serves its audio reads them here).
    system_prompt: str | None = None
    greeting: str | None = None
    answered_by: str | None = None  # Twilio answering-machine detection
    # When the gateway answered the call (the carrier bills from here); None: not answered,
    # or answered before this was stored.
    answered_at: datetime | None = None
    # Set by the same write that finalises the call: its end-call report is owed (the
    # webhook outbox turns it into a delivery, then clears it). Nothing is lost in between.
    report_pending: bool = False
    recording: dict[str, Any] | None = None  # a `RecordingState`, field by field
    # The gateway serving the call's audio (its id); the call holds that gateway's lease
    # (`gateway_leases`): once the gateway stops beating, any gateway finishes the call.
    served_by: str | None = None
    # Post-call analysis (`CallAnalysis`, field by field). `analysis_pending` is set by the
    # write that finishes the call (or by a re-run) and cleared once the result is stored
    # and published; `analysis_gen` is the claim generation the document reflects (claims
    # are inserts of `<call id>#<gen>` in `analysis_claims`: `storage.analyses`).
    analysis: dict[str, Any] | None = None
    analysis_pending: bool = False
    analysis_gen: int = 0
    analysis_until: datetime | None = None  # the lease of the claim at `analysis_gen`
    # The `_id` of the call's entry in `call_index` (`storage.call_index`), where its
    # finish writes its final status; None: keyed by the migration, or before it.
    index_key: str | None = None

    class Settings:
        name = "calls"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("call_sid", pymongo.ASCENDING)], name="call_sid"),
            pymongo.IndexModel([("started_at", pymongo.DESCENDING)], name="started_at_desc"),
            pymongo.IndexModel(
                [("org_id", pymongo.ASCENDING), ("started_at", pymongo.DESCENDING)],
                name="org_started_at",
            ),
        ]


class TurnDocument(Document):
    call_id: str
    index: int
    speaker: str
    text: str
    start_ms: float
    end_ms: float
    interrupted: bool = False
    # Agent turns: ms from the caller's end of speech to each stage of the answer.
    latency: dict[str, float] | None = None
    created_at: datetime

    class Settings:
        name = "turns"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            # Unique: two writers can never store two turns at one position of a call.
            pymongo.IndexModel(
                [("call_id", pymongo.ASCENDING), ("index", pymongo.ASCENDING)],
                name="call_id_index_unique",
                unique=True,
            ),
        ]


class OrganizationDocument(Document):
    name: str
    # Calls that reach no assistant's number belong to the default organisation.
    is_default: bool = False
    created_at: datetime
    inbound_lookup_url: str | None = None  # caller lookup of the organisation's inbound calls

    class Settings:
        name = "organizations"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("name", pymongo.ASCENDING)], name="name_unique", unique=True),
        ]


class ApiKeyDocument(Document):
    org_id: str
    name: str
    prefix: str  # the first characters of the key, to tell keys apart in listings
    key_hash: str  # SHA-256 of the whole key; the key itself is never stored
    created_at: datetime
    revoked_at: datetime | None = None

    class Settings:
        name = "api_keys"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel(
                [("key_hash", pymongo.ASCENDING)], name="key_hash_unique", unique=True
            ),
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
        ]


class AssistantDocument(Document):
    org_id: str
    name: str
    system_prompt: str
    greeting: str
    stt_provider: str = "auto"
    llm_provider: str = "auto"
    tts_provider: str = "auto"
    llm_model: str | None = None
    voice: str | None = None
    language: str = "en"
    webhook_url: str | None = None
    inbound_lookup_url: str | None = None
    max_duration_s: int = 1800
    recording: bool = True
    phone_numbers: list[str] = Field(default_factory=list)
    # A `TurnTakingConfig`, field by field (empty: the defaults, as for assistants stored
    # before it existed).
    turn_taking: dict[str, Any] = Field(default_factory=dict)
    # An `AnalysisPlan`, field by field but its JSON Schema as JSON text
    # (`structured_data_schema_json`; a nested document in assistants stored before).
    analysis: dict[str, Any] | None = None
    # None: stored before assistants chose their events (they send the default ones).
    webhook_events: list[str] | None = None
    # A `VoicemailPlan`, field by field (None: no plan).
    voicemail: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime

    class Settings:
        name = "assistants"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
            pymongo.IndexModel([("phone_numbers", pymongo.ASCENDING)], name="phone_numbers"),
        ]


class SipTrunkDocument(Document):
    """Mirror of a LiveKit SIP trunk (LiveKit holds the password; this never does)."""

    org_id: str
    livekit_id: str
    kind: str  # "inbound" | "outbound"
    provider: str  # "twilio" | "generic"
    name: str
    numbers: list[str] = Field(default_factory=list)
    address: str | None = None
    transport: str | None = None
    allowed_addresses: list[str] = Field(default_factory=list)
    allowed_numbers: list[str] = Field(default_factory=list)
    auth_username: str | None = None
    has_password: bool = False
    created_at: datetime

    class Settings:
        name = "sip_trunks"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
            pymongo.IndexModel(
                [("livekit_id", pymongo.ASCENDING)], name="livekit_id_unique", unique=True
            ),
        ]


class DispatchRuleDocument(Document):
    """Mirror of a LiveKit SIP dispatch rule and the assistant its calls reach."""

    org_id: str
    livekit_id: str
    name: str
    assistant_id: str
    trunk_ids: list[str] = Field(default_factory=list)  # our trunk ids
    kind: str  # "individual" | "direct"
    room_prefix: str | None = None
    room_name: str | None = None
    has_pin: bool = False
    created_at: datetime

    class Settings:
        name = "sip_dispatch_rules"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
            pymongo.IndexModel(
                [("livekit_id", pymongo.ASCENDING)], name="livekit_id_unique", unique=True
            ),
        ]


class WebhookDeliveryDocument(Document):
    """One webhook to deliver; `id` is the delivery id receivers use as idempotency key."""

    id: str  # type: ignore[assignment]
    org_id: str | None
    call_id: str
    event: str
    url: str
    body: str  # the exact bytes signed and sent, as UTF-8 text
    status: str = "pending"  # pending | delivered | failed
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    attempt_count: int = 0  # attempts since it was (re)queued
    next_attempt_at: datetime
    lease_owner: str | None = None
    lease_until: datetime
    lease_gen: int = 0  # which lease token generation this document reflects (see webhooks)
    created_at: datetime
    delivered_at: datetime | None = None
    # The event's place in its organisation's sequence: deliveries of one call to one URL
    # go out in this order, one at a time (None: queued before events had one; unordered).
    seq: int | None = None

    class Settings:
        name = "webhook_deliveries"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel(
                [("status", pymongo.ASCENDING), ("next_attempt_at", pymongo.ASCENDING)],
                name="status_next_attempt",
            ),
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
            # The claim's check for an earlier pending delivery of the same call.
            pymongo.IndexModel(
                [("call_id", pymongo.ASCENDING), ("seq", pymongo.ASCENDING)], name="call_seq"
            ),
        ]


class PhoneNumberDocument(Document):
    """A number of the registry, keyed by itself in E.164: a claim is one insert that the
    unique `_id` settles (FerretDB 1.24 has no atomic conditional update), and every lookup
    is by `_id`, which FerretDB serves without a scan."""

    id: str  # type: ignore[assignment]
    org_id: str | None  # None: reserved by the operator
    assigned_by: str  # "api" | "operator" | "migration"
    created_at: datetime

    class Settings:
        name = "phone_numbers"
        indexes: ClassVar[list[pymongo.IndexModel]] = [
            pymongo.IndexModel([("org_id", pymongo.ASCENDING)], name="org_id"),
        ]


class MigrationDocument(Document):
    """A one-off data migration this database has had (`_id` names it)."""

    id: str  # type: ignore[assignment]
    done_at: datetime

    class Settings:
        name = "migrations"
        indexes: ClassVar[list[pymongo.IndexModel]] = []
