"""Carrier notes beside a call go when the call is finished (deleted by `_id`), and any
left behind go with the background pruning once expired; claims expire the same way.
Against the real database (embedded FerretDB, or $TEST_MONGODB_URL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storage import CallStatus, Database, Direction, NewCall


async def _open_call(database: Database) -> str:
    call = await database.calls.create_call(
        NewCall(
            org_id=None, transport="twilio", call_sid="CA1", from_number="+15550001111",
            to_number="+15550002222", direction=Direction.INBOUND,
        ),
        started_at=datetime.now(UTC),
    )  # fmt: skip
    return call.id


async def _note_to(database: Database, call_id: str, *, at: datetime) -> None:
    await database.calls.record_carrier_answer(call_id, "human", at=at)
    await database.calls.record_carrier_end(
        call_id, status=CallStatus.COMPLETED, reason="twilio-completed", at=at
    )


async def test_carrier_notes_go_with_the_finish_or_once_expired(database: Database) -> None:
    calls = database.calls
    now = datetime.now(UTC)
    finished, stale, fresh = [await _open_call(database) for _ in range(3)]
    await _note_to(database, finished, at=now)
    await _note_to(database, stale, at=now - timedelta(days=2))  # its finish never deleted it
    await _note_to(database, fresh, at=now)

    done = await calls.finish_call(
        finished, status=CallStatus.COMPLETED, end_reason="caller-hung-up", ended_at=now
    )
    assert done.answered_by == "human"  # taken over by the finish, then deleted
    assert await calls.carrier_end(finished) is None

    assert await calls.carrier_end(stale) is not None  # nothing on the call path prunes
    await database.claims.prune_expired(datetime.now(UTC))
    assert await calls.carrier_end(stale) is None
    assert await calls.carrier_end(fresh) == (CallStatus.COMPLETED, "twilio-completed")
    # The fresh call's verdict is still there for its finish.
    ended = await calls.finish_call(
        fresh, status=CallStatus.COMPLETED, end_reason="caller-hung-up", ended_at=now
    )
    assert ended.answered_by == "human"
