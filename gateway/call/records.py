"""A call's stored record, opened the same way however the call begins (a Twilio webhook,
a SIP caller in a LiveKit room, an outbound call placed through the API): its organisation,
its assistant and the persona filled from the call's values."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from gateway.call.persona import Persona
from storage import (
    AccountRepository,
    AssistantRecord,
    CallRecord,
    CallStatus,
    CallStore,
    Direction,
    NewCall,
)


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
    status: CallStatus = CallStatus.RINGING,
) -> CallRecord:
    """Store a new call of `assistant` (None: the default assistant, in the default
    organisation). Its prompt and greeting are filled from the numbers and `metadata`;
    `MissingPlaceholders` if they lack a value, and nothing is stored then."""
    metadata = dict(metadata or {})
    persona = None
    if assistant is not None:
        org_id: str | None = assistant.org_id
        persona = Persona.for_call(
            system_prompt=assistant.config.system_prompt,
            greeting=assistant.config.greeting,
            values={"from_number": from_number, "to_number": to_number, **metadata},
        )
    else:
        default_org = await accounts.default_organization()
        org_id = default_org.id if default_org else None
    return await store.create_call(
        NewCall(
            org_id=org_id,
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
