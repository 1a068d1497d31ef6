"""A call's stored record, opened the same way however the call begins (a Twilio webhook,
a SIP caller in a LiveKit room, an outbound call placed through the API): its organisation,
its assistant and the persona filled from the call's values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.call.persona import Persona
from gateway.errors import InputTooLarge
from gateway.settings import Settings
from storage import (
    AccountRepository,
    AssistantRecord,
    CallRecord,
    CallStatus,
    CallStore,
    Direction,
    NewCall,
)


@dataclass(frozen=True, slots=True)
class CallInputLimits:
    """How much a call's metadata and its filled persona may hold (settings CALL_*)."""

    metadata_max_bytes: int
    metadata_max_keys: int
    prompt_max_chars: int

    @classmethod
    def of(cls, settings: Settings) -> CallInputLimits:
        return cls(
            metadata_max_bytes=settings.call_metadata_max_bytes,
            metadata_max_keys=settings.call_metadata_max_keys,
            prompt_max_chars=settings.call_prompt_max_chars,
        )

    def check_metadata(self, metadata: Mapping[str, str]) -> None:
        """`InputTooLarge` naming `metadata` when it has too many keys or bytes."""
        if len(metadata) > self.metadata_max_keys:
            raise InputTooLarge(
                ["body", "metadata"],
                f"metadata has {len(metadata)} keys (at most {self.metadata_max_keys})",
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
        if size > self.metadata_max_bytes:
            raise InputTooLarge(
                ["body", "metadata"],
                f"metadata is {size} bytes (at most {self.metadata_max_bytes})",
            )


async def _org_of(accounts: AccountRepository, assistant: AssistantRecord | None) -> str | None:
    """The organisation a call of `assistant` belongs to (None: the default assistant's,
    the default organisation, if there is one)."""
    if assistant is not None:
        return assistant.org_id
    default_org = await accounts.default_organization()
    return default_org.id if default_org else None


def _voicemail_message(assistant: AssistantRecord, direction: Direction) -> tuple[str, ...]:
    """The voicemail message an outbound call of `assistant` may leave (its placeholders are
    checked when the call is placed)."""
    plan = assistant.config.voicemail
    if plan is None or direction is not Direction.OUTBOUND:
        return ()
    return (plan.message,)


async def open_call(
    store: CallStore,
    accounts: AccountRepository,
    *,
    assistant: AssistantRecord | None,
    transport: str,
    direction: Direction,
    from_number: str,
    to_number: str,
    call_sid: str = "",
    metadata: Mapping[str, str] | None = None,
    limits: CallInputLimits,
    status: CallStatus = CallStatus.RINGING,
) -> CallRecord:
    """Store a new call of `assistant` (None: the default assistant, in the default
    organisation). Its prompt and greeting are filled from the numbers and `metadata`;
    `MissingPlaceholders` if they lack a value, `InputTooLarge` if the metadata or the
    filled persona is over `limits`, and nothing is stored then."""
    metadata = dict(metadata or {})
    limits.check_metadata(metadata)
    persona = None
    if assistant is not None:
        persona = Persona.for_call(
            system_prompt=assistant.config.system_prompt,
            greeting=assistant.config.greeting,
            values={"from_number": from_number, "to_number": to_number, **metadata},
            max_chars=limits.prompt_max_chars,
            also=(
                assistant.config.turn_taking.idle_reprompt,
                assistant.config.turn_taking.idle_goodbye,
                *_voicemail_message(assistant, direction),
            ),
        )
    return await store.create_call(
        NewCall(
            org_id=await _org_of(accounts, assistant),
            transport=transport,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
            direction=direction,
            assistant_id=assistant.id if assistant else None,
            metadata=metadata,
            status=status,
            system_prompt=persona.system_prompt if persona else None,
            greeting=persona.greeting if persona else None,
        ),
        started_at=datetime.now(UTC),
    )


async def record_refused_call(
    store: CallStore,
    accounts: AccountRepository,
    *,
    assistant: AssistantRecord | None,
    transport: str,
    direction: Direction,
    from_number: str,
    to_number: str,
    end_reason: str,
    call_sid: str = "",
    metadata: Mapping[str, str] | None = None,
) -> CallRecord:
    """Store a call the gateway refused without answering it, finished at once as `busy`
    with `end_reason`: its organisation the assistant's (or the default's), no persona (it
    was never answered, so no placeholder can be missing). Its report is owed as any
    finished call's is."""
    now = datetime.now(UTC)
    call = await store.create_call(
        NewCall(
            org_id=await _org_of(accounts, assistant),
            transport=transport,
            call_sid=call_sid,
            from_number=from_number,
            to_number=to_number,
            direction=direction,
            assistant_id=assistant.id if assistant else None,
            metadata=dict(metadata or {}),
            status=CallStatus.RINGING,
        ),
        started_at=now,
    )
    return await store.finish_call(
        call.id, status=CallStatus.BUSY, end_reason=end_reason, ended_at=now
    )
