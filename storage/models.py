"""Typed values that leave `storage/` (beanie documents never do).

Records read back are frozen pydantic models: the management API publishes them as they
are, hiding only what it lists as internal (see `gateway/api/models.py`), so each field
is declared once, here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import jsonschema
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    field_validator,
    model_validator,
)

Speaker = Literal["caller", "agent"]

# The events a call produces (bodies and order: `webhooks/events.py`). Declared here, the
# lowest layer, because an assistant's `webhook_events` is validated against it when saved.
WebhookEventType = Literal[
    "call.started",
    "call.status",
    "call.turn",
    "call.ended",
    "call.analyzed",
    "recording.ready",
]
# What an assistant sends when it chose nothing: today's receivers see only the new event.
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEventType, ...] = ("call.ended", "call.analyzed")


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


class _Record(BaseModel):
    """A value read from the database (immutable)."""

    model_config = ConfigDict(frozen=True)


class TurnRecord(_Record):
    id: str
    call_id: str
    index: int
    speaker: Speaker
    text: str
    start_ms: float
    end_ms: float
    interrupted: bool
    created_at: datetime
    latency: dict[str, float] | None = Field(
        default=None, description="agent turns: ms from the caller's end of speech to each stage"
    )


RecordingKind = Literal["gateway", "egress"]
RecordingStatus = Literal["recording", "complete", "failed"]


class RecordingState(_Record):
    """Where a call's recording is and how far it got.

    `gateway`: the gateway's own stereo recorder (Twilio streams), a multipart upload to
    `bucket`/`key` while the call runs (`upload_id` until it is completed). `egress`: a
    LiveKit Egress (`egress_id`) whose ended webhook gives the final `location`.
    `salvaged` marks a recording completed from the parts a crashed gateway had uploaded.
    `salvage_attempts` / `salvage_next_at` pace the outbox's retries of such a salvage.
    """

    kind: RecordingKind = Field(
        description="gateway: the gateway's stereo WAV of a Twilio stream; egress: LiveKit Egress"
    )
    status: RecordingStatus
    bucket: str | None = None
    key: str | None = None
    upload_id: str | None = None
    egress_id: str | None = None
    location: str | None = Field(default=None, description="where LiveKit Egress reported the file")
    size_bytes: int | None = None
    duration_s: float | None = None
    error: str | None = None
    salvaged: bool = Field(
        default=False, description="completed from the parts a stopped gateway uploaded"
    )
    # Salvage of an upload left open, retried with backoff: attempts that found the store
    # unreachable, and when the next may run (stored, so every gateway's outbox agrees).
    salvage_attempts: int = 0
    salvage_next_at: datetime | None = None


AnalysisStatus = Literal["pending", "done", "failed", "skipped"]


class AnalysisUsage(_Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CallAnalysis(_Record):
    """The post-call analysis of a call, as stored (`gateway/analysis/` runs it).

    `pending` from the call's end (or a re-run) until a gateway has run it; `skipped` with a
    `reason` when there was nothing to run (no analysis plan, no LLM configured, no
    transcript); `failed` with a `reason` when the model could not be reached or never
    answered JSON; `done` otherwise. Structured data that stayed invalid against the plan's
    schema after one retry is kept as the model gave it, with `data_error` saying why.
    """

    status: AnalysisStatus
    reason: str | None = Field(default=None, description="why it was skipped or failed")
    summary: str | None = None
    data: Any = Field(default=None, description="structured data per the plan's JSON Schema")
    data_error: str | None = Field(
        default=None, description="why `data` does not match the schema (it is kept as given)"
    )
    success: bool | None = Field(default=None, description="the success criteria were met")
    success_reason: str | None = None
    model: str | None = None
    usage: AnalysisUsage | None = Field(default=None, description="the model's tokens, all tries")
    attempts: int = Field(default=0, description="requests made to the model")
    completed_at: datetime | None = None


class CarrierUsage(_Record):
    """Seconds a carrier carried the call (from answered to ended)."""

    provider: str = Field(description="the call's transport: twilio, livekit or web")
    seconds: float = Field(ge=0)


class SttUsage(_Record):
    """Seconds of caller audio sent to one speech-to-text provider."""

    provider: str = Field(description="deepgram, pocketsphinx (the local recogniser), ...")
    seconds: float = Field(ge=0)


class LlmUsage(_Record):
    """Tokens one model used over the call, as the provider reported them."""

    provider: str = Field(description="openai (any OpenAI-compatible endpoint), or unknown")
    model: str | None = Field(default=None, description="the model asked for; null: unknown")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class TtsUsage(_Record):
    """Characters of text sent to one text-to-speech provider to be spoken."""

    provider: str = Field(description="cartesia, espeak-ng (the local voice), ...")
    characters: int = Field(ge=0)


class CallUsage(_Record):
    """What a call used of each provider, counted while it ran (the carrier at its end).

    Calls stored before usage was itemised hold only `{prompt_tokens, completion_tokens}`:
    they read as the usage of one model of an unknown provider. `prompt_tokens` and
    `completion_tokens` are also given as totals over `llm`, as they always were.
    """

    carrier: tuple[CarrierUsage, ...] = ()
    stt: tuple[SttUsage, ...] = ()
    llm: tuple[LlmUsage, ...] = ()
    tts: tuple[TtsUsage, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_token_counts(cls, value: Any) -> Any:
        """An old document: LLM tokens only, of a model nobody recorded."""
        if isinstance(value, Mapping) and not {"carrier", "stt", "llm", "tts"} & set(value):
            prompt, completion = value.get("prompt_tokens", 0), value.get("completion_tokens", 0)
            if not (prompt or completion):
                return {}
            return {
                "llm": [
                    {
                        "provider": "unknown",
                        "model": None,
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                    }
                ]
            }
        return value

    @computed_field(description="LLM prompt tokens of the whole call (the sum over `llm`)")  # type: ignore[prop-decorator]
    @property
    def prompt_tokens(self) -> int:
        return sum(item.prompt_tokens for item in self.llm)

    @computed_field(description="LLM completion tokens of the whole call (the sum over `llm`)")  # type: ignore[prop-decorator]
    @property
    def completion_tokens(self) -> int:
        return sum(item.completion_tokens for item in self.llm)

    def with_carrier(self, provider: str, seconds: float) -> CallUsage:
        """This usage with the carrier's seconds (replacing any counted before)."""
        carried = CarrierUsage(provider=provider, seconds=round(max(0.0, seconds), 3))
        return self.model_copy(update={"carrier": (carried,)})


CostKind = Literal["carrier", "stt", "llm_input", "llm_output", "tts"]
CostUnit = Literal["minute", "token", "character"]


class CostItem(_Record):
    """One line of a call's cost: `quantity` `unit`s at `unit_price` each.

    `amount` is rounded half-up to 6 decimal places from the exact product (so it may
    differ from `quantity` x `unit_price` in the last place when `quantity` is rounded:
    minutes are given to 6 places from the counted seconds). Decimal values are exact and
    published as decimal strings."""

    kind: CostKind
    provider: str
    model: str | None = Field(default=None, description="LLM items: the model")
    quantity: Decimal
    unit: CostUnit
    unit_price: Decimal = Field(description="price of one unit, exact")
    amount: Decimal


class CallCost(_Record):
    """A call's cost from its usage and the price table in force when it was finished
    (`PRICES_JSON` / `PRICES_FILE`); `total` is the sum of the items' amounts."""

    items: tuple[CostItem, ...] = ()
    total: Decimal
    currency: str


class CallRecord(_Record):
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
    latency_p50: dict[str, float] | None = None
    latency_p95: dict[str, float] | None = None
    usage: CallUsage | None = Field(
        default=None, description="what the call used of each provider (carrier, STT, LLM, TTS)"
    )
    cost: CallCost | None = Field(
        default=None, description="the call's cost, priced when it was finished"
    )
    system_prompt: str | None = None
    greeting: str | None = None
    answered_by: str | None = None
    answered_at: datetime | None = Field(
        default=None, description="when the gateway answered the call (carrier time from here)"
    )
    recording: RecordingState | None = None
    served_by: str | None = None  # the gateway serving its audio, while it is live
    analysis: CallAnalysis | None = Field(default=None, description="post-call analysis")


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


_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_NUMBER_PUNCTUATION = str.maketrans("", "", " .-()/\t")


def unstorable_key(key: str) -> str | None:
    """Why `key` cannot be a field name of a stored document (None: it can): the store
    refuses a name that starts with `$` or holds a `.` (FerretDB) or a NUL byte (BSON)."""
    if key.startswith("$"):
        return "starts with '$'"
    if "." in key:
        return "contains '.'"
    if "\x00" in key:
        return "contains a NUL character"
    return None


def normalize_e164(raw: str) -> str:
    """`raw` as an E.164 number: spaces, dots, dashes, slashes and brackets dropped, a
    leading `00` read as `+`; `ValueError` when what is left is not `+` and 7-15 digits."""
    number = raw.strip().translate(_NUMBER_PUNCTUATION)
    if number.startswith("00"):
        number = "+" + number[2:]
    if not _E164.match(number):
        raise ValueError(f"not an E.164 phone number: {raw[:40]!r}")
    return number


def _lenient_e164(value: object) -> object:
    """Normalise a string to E.164 when it can be one (the pattern then judges the rest)."""
    if isinstance(value, str):
        try:
            return normalize_e164(value)
        except ValueError:
            return value
    return value


# A phone number in E.164 (`+15551234567`); input with spaces, dashes or brackets is
# normalised first, so one number has one spelling wherever it is stored or compared.
E164 = Annotated[
    str,
    BeforeValidator(_lenient_e164),
    StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$"),
]
ProviderChoice = Literal["auto", "cloud", "local"]


DEFAULT_BACKCHANNELS: tuple[str, ...] = (
    "uh-huh", "uh huh", "mm-hmm", "mm-hm", "mhmm", "mmhmm", "mhm", "mm", "hmm", "hm",
    "yeah", "yes", "yep", "yup", "ok",
    "okay", "right", "sure", "i see", "got it", "alright", "all right", "aha", "oh",
    "uh", "um", "ah", "huh", "cool", "great", "nice", "good", "exactly", "true",
)  # fmt: skip


class TurnTakingConfig(BaseModel):
    """How an assistant takes turns: when the caller's turn ends, which caller sounds
    interrupt the agent, what it does with a silent caller and with keypad digits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vad: Literal["silero", "energy"] = Field(
        default="silero", description="voice activity detector: neural (Silero) or energy"
    )
    end_of_turn: Literal["smart-turn", "silence"] = Field(
        default="smart-turn",
        description="smart-turn: each pause is judged by an audio turn model and the words "
        "so far; silence: a fixed wait",
    )
    pause_ms: int = Field(
        default=200, ge=60, le=2000, description="silence before a pause is judged (smart-turn)"
    )
    complete_wait_ms: int = Field(
        default=200,
        ge=0,
        le=3000,
        description="silence that ends a turn that sounds and reads complete",
    )
    unsure_wait_ms: int = Field(
        default=1200,
        ge=0,
        le=5000,
        description="silence that ends a turn the audio model and the words disagree on, "
        "or that sounds complete when the words are not known",
    )
    incomplete_wait_ms: int = Field(
        default=1500,
        ge=100,
        le=5000,
        description="silence that ends a turn judged incomplete (the longest wait)",
    )
    transcript_check: bool = Field(
        default=True,
        description="judge the words so far too (English assistants; others: audio only)",
    )
    smart_turn_threshold: float = Field(
        default=0.5, ge=0.05, le=0.99, description="turn model probability that sounds complete"
    )
    sentence_end_threshold: float = Field(
        default=-0.8,
        ge=-5.0,
        le=0.0,
        description="log10 probability of a sentence end after the last two words that reads "
        "complete",
    )
    silence_ms: int = Field(
        default=600, ge=100, le=5000, description="silence that ends a turn (end_of_turn=silence)"
    )
    min_speech_ms: int = Field(default=120, ge=20, le=2000, description="speech that counts")
    backchannel_words: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] = Field(
        default_factory=lambda: list(DEFAULT_BACKCHANNELS),
        max_length=200,
        description="caller words that do not interrupt the agent (acknowledgements)",
    )
    interruption_min_speech_ms: int = Field(
        default=800,
        ge=100,
        le=5000,
        description="caller speech over the agent this long interrupts it whatever its words",
    )
    idle_timeout_s: float = Field(
        default=15.0,
        ge=0,
        le=600,
        description="silence after the agent's turn before a reprompt (0: never)",
    )
    idle_max_prompts: int = Field(default=2, ge=0, le=10, description="reprompts before hanging up")
    idle_reprompt: str = Field(default="Are you still there?", min_length=1, max_length=500)
    idle_goodbye: str = Field(
        default="I have not heard from you, so I will end the call now. Goodbye.",
        min_length=1,
        max_length=500,
    )
    keypad_timeout_s: float = Field(
        default=3.0, ge=0.5, le=30, description="pause after the last digit that ends the entry"
    )
    keypad_max_digits: int = Field(default=20, ge=1, le=64, description="digits that end the entry")

    @field_validator("backchannel_words")
    @classmethod
    def _words_have_words(cls, words: list[str]) -> list[str]:
        for phrase in words:
            if not re.search(r"\w", phrase):
                raise ValueError(f"{phrase!r} holds no word")
        return words

    @field_validator("idle_timeout_s")
    @classmethod
    def _idle_timeout_is_off_or_human(cls, seconds: float) -> float:
        if 0 < seconds < 1:
            raise ValueError("idle_timeout_s is 0 (never) or at least 1 s")
        return seconds

    @model_validator(mode="after")
    def _waits_grow(self) -> TurnTakingConfig:
        if not self.complete_wait_ms <= self.unsure_wait_ms <= self.incomplete_wait_ms:
            raise ValueError(
                "the waits must grow: complete_wait_ms <= unsure_wait_ms <= incomplete_wait_ms"
            )
        return self


class AnalysisPlan(BaseModel):
    """What to work out of a call once it has ended, from its stored transcript (each part
    optional): a summary, structured data matching a JSON Schema, a success evaluation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary_prompt: str | None = Field(
        default=None, min_length=1, max_length=4_000, description="how to summarise the call"
    )
    structured_data_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema (draft 2020-12) of the data to extract"
    )
    success_criteria: str | None = Field(
        default=None, min_length=1, max_length=4_000, description="what makes the call a success"
    )
    model: str | None = Field(
        default=None, max_length=120, description="chat model (default: the assistant's)"
    )

    @field_validator("structured_data_schema")
    @classmethod
    def _is_a_json_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                raise ValueError(
                    f"not a JSON Schema (draft 2020-12) at {where}: {exc.message}"
                ) from exc
        return schema

    def empty(self) -> bool:
        """Whether it asks for nothing."""
        return (
            self.summary_prompt is None
            and self.structured_data_schema is None
            and self.success_criteria is None
        )


class VoicemailPlan(BaseModel):
    """What an outbound call of the assistant does when a machine answers: hang up at once,
    or wait for the greeting to end (the beep) and leave `message` (its `{{placeholders}}`
    filled from the call's metadata like the greeting), then hang up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: Literal["hangup", "leave_message"]
    message: str = Field(
        default="", max_length=1_000, description="said after the beep (leave_message)"
    )

    @model_validator(mode="after")
    def _message_to_leave(self) -> VoicemailPlan:
        if self.action == "leave_message" and not self.message.strip():
            raise ValueError("leave_message needs a message")
        return self


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
    inbound_lookup_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2_000,
        description="asked (signed POST) before an inbound call is answered for {{placeholder}} "
        "values and optionally another assistant; wins over the organisation's",
    )
    max_duration_s: int = Field(default=1800, ge=10, le=4 * 3600)
    recording: bool = True
    phone_numbers: list[E164] = Field(
        default_factory=list, description="inbound Twilio numbers answered by this assistant"
    )
    turn_taking: TurnTakingConfig = Field(default_factory=TurnTakingConfig)
    analysis: AnalysisPlan | None = Field(
        default=None, description="post-call analysis, run after the call has ended"
    )
    webhook_events: list[WebhookEventType] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS),
        max_length=len(get_args(WebhookEventType)),
        description="the event types sent to webhook_url (every event is stored and streamed)",
    )
    voicemail: VoicemailPlan | None = Field(
        default=None,
        description="outbound calls: what to do when an answering machine picks up",
    )

    @field_validator("webhook_events")
    @classmethod
    def _each_once(cls, value: list[WebhookEventType]) -> list[WebhookEventType]:
        return list(dict.fromkeys(value))


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
    # Asked before an inbound call of the organisation is answered (an assistant's own wins).
    inbound_lookup_url: str | None = None


class ApiKeyRecord(_Record):
    id: str
    org_id: str
    name: str
    prefix: str = Field(description="first characters of the key, to tell keys apart")
    created_at: datetime
    revoked_at: datetime | None


TrunkKind = Literal["inbound", "outbound"]
SipProvider = Literal["twilio", "generic"]


class SipTrunkRecord(_Record):
    """A trunk as stored: its password is in LiveKit only (`has_password` says if one is set)."""

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


class DispatchRuleRecord(_Record):
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


NumberAssigner = Literal["api", "operator", "migration"]


class PhoneNumberRecord(_Record):
    """A number of the registry: the organisation that may use it (`None`: reserved by the
    operator, no organisation may claim it) and how it came to be assigned."""

    number: str = Field(description="E.164")
    org_id: str | None
    assigned_by: NumberAssigner = Field(
        description="api: claimed with the organisation's key; operator: `voice-gateway numbers "
        "assign`; migration: found on the organisation's assistants or trunks"
    )
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NumberAdoption:
    """What registering the numbers already in use did: the numbers registered to the one
    organisation that used them, and those several organisations used (left for the operator)."""

    adopted: dict[str, str] = field(default_factory=dict)  # number -> org_id
    disputed: dict[str, frozenset[str]] = field(default_factory=dict)  # number -> org_ids
