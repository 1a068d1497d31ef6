"""Call storage against the real MongoDB-wire server (FerretDB on SQLite)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from storage import (
    CallNotFound,
    CallRepository,
    CallStatus,
    Database,
    Direction,
    NewCall,
    StorageError,
    open_database,
)


def _new_call(sid: str = "CA1", *, org_id: str | None = None) -> NewCall:
    return NewCall(
        org_id=org_id,
        transport="twilio",
        call_sid=sid,
        from_number="+15550001111",
        to_number="+15550002222",
        direction=Direction.INBOUND,
        metadata={"campaign": "spring"},
    )


async def test_call_lifecycle_with_turns(database: Database) -> None:
    store = database.calls
    t0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    call = await store.create_call(_new_call(), started_at=t0)
    assert call.status is CallStatus.RINGING and call.started_at == t0
    await store.set_status(call.id, CallStatus.IN_PROGRESS)
    await store.set_stream(call.id, "MZ1")
    greeting = await store.add_turn(
        call.id, speaker="agent", text="Hello", start_ms=0, end_ms=1500.04
    )
    await store.add_turn(call.id, speaker="caller", text="hours", start_ms=2000, end_ms=3000)
    reply = await store.add_turn(
        call.id, speaker="agent", text="We are open", start_ms=3500, end_ms=5000
    )
    await store.update_turn(reply.id, text="We are", end_ms=4200, interrupted=True)
    assert (greeting.index, reply.index) == (0, 2)

    ended = await store.finish_call(
        call.id,
        status=CallStatus.COMPLETED,
        end_reason="caller-hung-up",
        ended_at=t0 + timedelta(seconds=42),
        with_turns=True,
    )
    assert ended.status is CallStatus.COMPLETED
    assert ended.duration_s == 42.0
    assert ended.stream_sid == "MZ1"
    assert [t.text for t in ended.turns] == ["Hello", "hours", "We are"]
    assert [t.speaker for t in ended.turns] == ["agent", "caller", "agent"]
    assert ended.turns[2].interrupted and not ended.turns[0].interrupted
    assert ended.turns[0].end_ms == 1500.0
    assert ended.metadata == {"campaign": "spring"}
    assert ended.ended_at is not None and ended.ended_at.tzinfo is not None

    # Finishing again keeps the first outcome.
    again = await store.finish_call(
        call.id, status=CallStatus.FAILED, end_reason="late", ended_at=t0 + timedelta(hours=1)
    )
    assert (again.status, again.end_reason, again.duration_s) == (
        CallStatus.COMPLETED,
        "caller-hung-up",
        42.0,
    )
    # Without turns asked for, what the finish returns is the call as stored, turns aside.
    assert again == ended.model_copy(update={"turns": ()})


async def test_lookup_and_listing(database: Database) -> None:
    store = database.calls
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [
        (await store.create_call(_new_call(f"CA{i}"), started_at=base + timedelta(minutes=i))).id
        for i in range(3)
    ]
    listed = (await store.list_calls(limit=10)).items
    assert [c.id for c in listed] == list(reversed(ids))
    assert len((await store.list_calls(limit=2)).items) == 2
    found = await store.get_call_by_sid("CA1")
    assert found is not None and found.id == ids[1]
    assert await store.get_call_by_sid("CA-nope") is None
    with pytest.raises(CallNotFound):
        await store.get_call("0" * 24)
    with pytest.raises(CallNotFound):
        await store.get_call("not-an-id")


async def test_turns_survive_a_crash(mongo_url: str) -> None:
    """Turns are written as they happen: a new connection sees them without any finish."""
    name = "crash_" + uuid.uuid4().hex[:12]
    first = await open_database(mongo_url, name)
    call = await first.calls.create_call(_new_call("CA-crash"), started_at=datetime.now(UTC))
    await first.calls.add_turn(call.id, speaker="agent", text="Hi", start_ms=0, end_ms=10)
    await first.calls.add_turn(call.id, speaker="caller", text="help", start_ms=20, end_ms=30)
    await first.close()  # no finish_call: the process "died"

    second = await open_database(mongo_url, name)
    try:
        stored = await second.calls.get_call(call.id)
        assert [t.text for t in stored.turns] == ["Hi", "help"]
        assert stored.status is CallStatus.RINGING and stored.ended_at is None
        # A new process continues the numbering after the stored turns.
        turn = await second.calls.add_turn(
            call.id, speaker="agent", text="later", start_ms=40, end_ms=50
        )
        assert turn.index == 2
    finally:
        await second.close()
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
        await client.drop_database(name)
        await client.close()


async def test_two_writers_never_share_a_turn_position(database: Database) -> None:
    """A writer with a stale counter re-reads the stored turns (unique index)."""
    call = await database.calls.create_call(_new_call(), started_at=datetime.now(UTC))
    other = CallRepository()
    await other.add_turn(call.id, speaker="caller", text="a", start_ms=0, end_ms=1)
    await database.calls.add_turn(call.id, speaker="agent", text="b", start_ms=1, end_ms=2)
    late = await other.add_turn(call.id, speaker="caller", text="c", start_ms=2, end_ms=3)
    assert late.index == 2
    stored = await database.calls.get_call(call.id)
    assert [(t.index, t.text) for t in stored.turns] == [(0, "a"), (1, "b"), (2, "c")]


async def test_a_finished_call_keeps_its_final_state(database: Database) -> None:
    store = database.calls
    t0 = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)
    call = await store.create_call(_new_call(), started_at=t0)
    assert call.started_at == t0.replace(microsecond=123000)  # BSON keeps milliseconds
    assert call == await store.get_call(call.id)
    finished = await store.finish_call(
        call.id, status=CallStatus.BUSY, end_reason="busy", ended_at=t0 + timedelta(seconds=1)
    )
    assert finished == await store.get_call(call.id, with_turns=False)  # as written, unread
    await store.set_status(call.id, CallStatus.IN_PROGRESS)  # a late, out-of-order callback
    assert (await store.get_call(call.id)).status is CallStatus.BUSY
    with pytest.raises(CallNotFound):
        await store.set_status("0" * 24, CallStatus.IN_PROGRESS)


async def test_the_answer_time_is_stored_with_the_status_or_after_a_carrier_moved_it(
    database: Database,
) -> None:
    store, t0 = database.calls, datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    first = await store.create_call(_new_call(), started_at=t0)
    answered = t0 + timedelta(seconds=7)
    assert await store.set_status(first.id, CallStatus.IN_PROGRESS, answered_at=answered)
    stored = await store.get_call(first.id)
    assert (stored.status, stored.answered_at) == (CallStatus.IN_PROGRESS, answered)
    # The carrier's callback moved the status first: the answer time is stored all the same.
    second = await store.create_call(_new_call(), started_at=t0)
    assert await store.set_status(second.id, CallStatus.IN_PROGRESS)
    assert not await store.set_status(second.id, CallStatus.IN_PROGRESS, answered_at=answered)
    assert (await store.get_call(second.id)).answered_at == answered


async def test_unknown_turn_and_naive_times_are_refused(database: Database) -> None:
    store = database.calls
    with pytest.raises(StorageError, match="no turn"):
        await store.update_turn("0" * 24, text="x", end_ms=1, interrupted=True)
    with pytest.raises(ValueError, match="naive"):
        await store.create_call(_new_call(), started_at=datetime(2026, 1, 1))


async def test_driver_errors_surface_as_storage_errors(database: Database) -> None:
    call = await database.calls.create_call(_new_call(), started_at=datetime.now(UTC))
    await database.close()  # the client now refuses work: a PyMongoError inside
    with pytest.raises(StorageError, match="database error"):
        await database.calls.get_call(call.id)
