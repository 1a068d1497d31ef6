"""Organisations, keys, assistants, the number registry and call pages on the real
MongoDB-wire server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from storage import (
    AssistantConfig,
    CallFilter,
    CallStatus,
    Database,
    Direction,
    InvalidCursor,
    NewCall,
    NotFound,
    NumberTaken,
    NumberUnavailable,
    TurnTakingConfig,
    hash_api_key,
)
from storage.documents import ApiKeyDocument


async def test_keys_are_stored_hashed_and_revocation_is_immediate(database: Database) -> None:
    accounts = database.accounts
    org = await accounts.ensure_organization("acme")
    assert org.is_default  # the first organisation owns calls no assistant takes
    other = await accounts.ensure_organization("globex")
    assert not other.is_default
    assert (await accounts.ensure_organization("acme")).id == org.id

    record, secret = await accounts.create_key(org.id, name="ci")
    stored = await ApiKeyDocument.find_one(ApiKeyDocument.org_id == org.id)
    assert stored is not None and stored.key_hash == hash_api_key(secret)
    assert secret not in stored.model_dump_json()
    found = await accounts.find_active_key(secret)
    assert found is not None and found.org_id == org.id
    assert await accounts.find_active_key(secret + "x") is None

    with pytest.raises(NotFound):  # another organisation cannot revoke it
        await accounts.revoke_key(record.id, org_id=other.id)
    revoked = await accounts.revoke_key(record.id, org_id=org.id)
    assert revoked.revoked_at is not None
    assert await accounts.find_active_key(secret) is None


async def test_assistants_are_scoped_and_numbers_unique(database: Database) -> None:
    assistants = database.assistants
    await database.numbers.claim("org-a", "+15550000001")
    config = AssistantConfig(
        name="A",
        system_prompt="Hi {{name}}",
        greeting="Hello",
        phone_numbers=["+15550000001"],
        turn_taking=TurnTakingConfig(idle_timeout_s=2, backchannel_words=["uh-huh"]),
    )
    mine = await assistants.create("org-a", config)
    assert (await assistants.get("org-a", mine.id)).config == config  # turn-taking too
    with pytest.raises(NotFound):
        await assistants.get("org-b", mine.id)
    with pytest.raises(NotFound):
        await assistants.get("org-a", "not-an-id")
    with pytest.raises(NumberTaken):  # one assistant per number within the organisation
        await assistants.create("org-a", config.model_copy(update={"name": "B"}))
    with pytest.raises(NumberUnavailable):
        await database.numbers.claim("org-b", "+15550000001")
    found = await assistants.for_number("+15550000001")
    assert found is not None and found.id == mine.id
    changed = await assistants.replace(
        "org-a", mine.id, config.model_copy(update={"recording": False})
    )
    assert changed.config.recording is False and changed.updated_at >= mine.updated_at
    await assistants.delete("org-a", mine.id)
    assert await assistants.for_number("+15550000001") is None
    assert await assistants.list("org-a") == []


async def test_racing_claims_on_a_number_leave_exactly_one_holder(database: Database) -> None:
    numbers = database.numbers
    orgs = [f"org-{i}" for i in range(8)]
    results = await asyncio.gather(
        *(numbers.claim(org, "+15550000002") for org in orgs), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and all(isinstance(r, NumberUnavailable) for r in lost)
    holder = await numbers.owner("+15550000002")
    assert holder is not None and holder.org_id == won[0].org_id
    assert await numbers.not_registered(won[0].org_id or "", ["+15550000002"]) == []
    assert await numbers.not_registered("org-x", ["+15550000002"]) == ["+15550000002"]


def _call(org: str, i: int, direction: Direction = Direction.INBOUND) -> NewCall:
    return NewCall(
        org_id=org,
        transport="twilio",
        call_sid=f"CA{i}",
        from_number="+15550001111",
        to_number="+15550002222",
        direction=direction,
        assistant_id="asst-1" if i % 2 else "asst-2",
    )


async def test_call_pages_follow_cursors_through_filters(database: Database) -> None:
    store = database.calls
    base = datetime(2026, 3, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        # Two calls share each start time: the cursor must break the tie by id.
        call = await store.create_call(_call("org-a", i), started_at=base + timedelta(i // 2))
        ids.append(call.id)
    await store.create_call(_call("org-b", 99), started_at=base)

    seen, cursor = [], None
    while True:
        page = await store.list_calls(CallFilter(org_id="org-a"), limit=3, cursor=cursor)
        seen += [c.id for c in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen)) == 7
    assert [c.started_at for c in (await store.list_calls(CallFilter(org_id="org-a"))).items] == [
        base + timedelta(i // 2) for i in reversed(range(7))
    ]

    odd = await store.list_calls(CallFilter(org_id="org-a", assistant_id="asst-1"))
    assert {c.call_sid for c in odd.items} == {"CA1", "CA3", "CA5"}
    window = await store.list_calls(
        CallFilter(
            org_id="org-a", started_after=base + timedelta(1), started_before=base + timedelta(3)
        )
    )
    assert {c.call_sid for c in window.items} == {"CA2", "CA3", "CA4", "CA5"}
    await store.finish_call(
        ids[0], status=CallStatus.BUSY, end_reason="twilio-busy", ended_at=base + timedelta(1)
    )
    busy = await store.list_calls(CallFilter(org_id="org-a", status=CallStatus.BUSY))
    assert [c.id for c in busy.items] == [ids[0]]
    outbound = await store.list_calls(CallFilter(direction=Direction.OUTBOUND))
    assert outbound.items == []
    with pytest.raises(InvalidCursor):
        await store.list_calls(cursor="not-a-cursor")


async def test_status_only_moves_forward(database: Database) -> None:
    store = database.calls
    call = await store.create_call(
        NewCall(
            org_id="o",
            transport="twilio",
            call_sid="",
            from_number="+1555",
            to_number="+1556",
            direction=Direction.OUTBOUND,
            status=CallStatus.QUEUED,
        ),
        started_at=datetime.now(UTC),
    )
    await store.set_status(call.id, CallStatus.IN_PROGRESS)
    await store.set_status(call.id, CallStatus.RINGING)  # late: ignored
    assert (await store.get_call(call.id)).status == CallStatus.IN_PROGRESS
    await store.set_call_sid(call.id, "CA-late")
    assert (await store.get_call_by_sid("CA-late")) is not None
