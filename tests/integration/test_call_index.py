"""The calls' `_id` keys (`storage.call_index`) against the real MongoDB-wire server: the
calls list, the lookups by carrier id and egress id, turns, and the rows of open and owed
calls answer exactly what a query of the calls would."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from beanie import PydanticObjectId

from storage import (
    CallRecord,
    CallRepository,
    CallStatus,
    Database,
    Direction,
    NewCall,
)
from storage.call_index import BACKFILL, CALL_INDEX, CallIndex, index_entries
from storage.documents import CallDocument, MigrationDocument
from storage.models import CallFilter, RecordingState

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _new(org: str | None, *, sid: str, assistant: str | None, direction: Direction) -> NewCall:
    return NewCall(
        org_id=org,
        transport="twilio",
        call_sid=sid,
        from_number="+15550001111",
        to_number="+15550002222",
        direction=direction,
        assistant_id=assistant,
    )


def _expected(calls: list[CallRecord], where: CallFilter) -> list[str]:
    def fits(c: CallRecord) -> bool:
        return (
            c.org_id == where.org_id
            and (where.assistant_id is None or c.assistant_id == where.assistant_id)
            and (where.status is None or c.status is where.status)
            and (where.direction is None or c.direction is where.direction)
            and (where.started_after is None or c.started_at >= where.started_after)
            and (where.started_before is None or c.started_at < where.started_before)
        )

    return [c.id for c in sorted(filter(fits, calls), key=lambda c: (c.started_at, c.id))][::-1]


async def _all_pages(store: CallRepository, where: CallFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    for _ in range(200):
        page = await store.list_calls(where, limit=limit, cursor=cursor)
        ids.extend(c.id for c in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("the pages never ended")


async def test_pages_of_two_organisations_match_the_calls_in_order(database: Database) -> None:
    store = database.calls
    rng = random.Random(17)
    made: list[CallRecord] = []
    # Out of order on purpose (late entries), with many equal starts (ties broken by id).
    for i in range(90):
        org = "org-a" if i % 3 else "org-b"
        started = T0 + timedelta(seconds=rng.choice([0, 1, 2, 5, 8, 13, 21]) - (i // 30) * 30)
        call = await store.create_call(
            _new(
                org,
                sid=f"CA{i}",
                assistant=f"asst-{i % 2}",
                direction=Direction.OUTBOUND if i % 4 == 0 else Direction.INBOUND,
            ),
            started_at=started,
        )
        made.append(call)
    for call in made[::5]:
        await store.set_status(call.id, CallStatus.IN_PROGRESS)
    for call in made[::7]:
        await store.finish_call(
            call.id, status=CallStatus.BUSY, end_reason="busy", ended_at=T0 + timedelta(minutes=5)
        )
    current = [await store.get_call(c.id, with_turns=False) for c in made]

    filters = [
        CallFilter(org_id="org-a"),
        CallFilter(org_id="org-b"),
        CallFilter(org_id="org-a", status=CallStatus.BUSY),
        CallFilter(org_id="org-a", status=CallStatus.IN_PROGRESS, assistant_id="asst-1"),
        CallFilter(org_id="org-b", direction=Direction.OUTBOUND),
        CallFilter(
            org_id="org-a",
            started_after=T0 - timedelta(seconds=28),
            started_before=T0 + timedelta(seconds=5),
        ),
        CallFilter(org_id="org-c"),
    ]
    for where in filters:
        expected = _expected(current, where)
        for limit in (1, 4, 50):
            assert await _all_pages(store, where, limit) == expected, (where, limit)


async def test_a_call_changed_or_stored_after_a_page_is_read_shows_on_the_next(
    database: Database,
) -> None:
    store = database.calls
    calls = [
        await store.create_call(
            _new("org-a", sid=f"CA{i}", assistant=None, direction=Direction.INBOUND),
            started_at=T0 + timedelta(seconds=i),
        )
        for i in range(6)
    ]
    ringing = CallFilter(org_id="org-a", status=CallStatus.RINGING)
    first = await store.list_calls(ringing, limit=2)
    assert [c.id for c in first.items] == [calls[5].id, calls[4].id]
    # After the page: a later call leaves the filter, an older one is stored (late).
    await store.set_status(calls[3].id, CallStatus.IN_PROGRESS)
    older = await store.create_call(
        _new("org-a", sid="CA-old", assistant=None, direction=Direction.INBOUND),
        started_at=T0 + timedelta(seconds=2, milliseconds=500),
    )
    rest = await _all_pages_from(store, ringing, first.next_cursor)
    assert rest == [older.id, calls[2].id, calls[1].id, calls[0].id]
    # A second process (its own hints) sees the same.
    other = CallRepository()
    assert await _all_pages(other, CallFilter(org_id="org-a"), 3) == [
        calls[5].id,
        calls[4].id,
        calls[3].id,
        older.id,
        calls[2].id,
        calls[1].id,
        calls[0].id,
    ]


async def _all_pages_from(
    store: CallRepository, where: CallFilter, cursor: str | None
) -> list[str]:
    ids: list[str] = []
    while cursor is not None:
        page = await store.list_calls(where, limit=2, cursor=cursor)
        ids.extend(c.id for c in page.items)
        cursor = page.next_cursor
    return ids


async def test_lookups_turns_and_rows_read_by_keys(database: Database) -> None:
    store = database.calls
    first = await store.create_call(
        _new("org-a", sid="CA-same", assistant=None, direction=Direction.INBOUND), started_at=T0
    )
    newer = await store.create_call(
        _new("org-a", sid="CA-same", assistant=None, direction=Direction.INBOUND),
        started_at=T0 + timedelta(minutes=1),
    )
    placed = await store.create_call(
        _new("org-a", sid="", assistant=None, direction=Direction.OUTBOUND), started_at=T0
    )
    found = await store.get_call_by_sid("CA-same")
    assert found is not None and found.id == newer.id
    assert await store.get_call_by_sid("CA-none") is None
    await store.set_call_sid(placed.id, "CA-placed")
    found = await store.get_call_by_sid("CA-placed")
    assert found is not None and found.id == placed.id

    await store.set_recording(
        first.id, RecordingState(kind="egress", status="recording", egress_id="EG_1")
    )
    by_egress = await store.get_call_by_egress("EG_1")
    assert by_egress is not None and by_egress.id == first.id
    assert await store.get_call_by_egress("EG_2") is None

    # Turns written by two processes keep their order and positions.
    other = CallRepository()
    await store.add_turn(first.id, speaker="agent", text="a", start_ms=0, end_ms=1)
    await other.add_turn(first.id, speaker="caller", text="b", start_ms=2, end_ms=3)
    third = await store.add_turn(first.id, speaker="agent", text="c", start_ms=4, end_ms=5)
    again = await store.add_turn(
        first.id, speaker="agent", text="c", start_ms=4, end_ms=5, turn_id=third.id
    )
    assert again == third
    stored = await other.get_call(first.id)
    assert [(t.index, t.text) for t in stored.turns] == [(0, "a"), (1, "b"), (2, "c")]

    await store.set_served_by(first.id, "gw-1")
    await store.set_served_by(newer.id, "gw-2")
    assert {c.id for c in await store.served_calls()} == {first.id, newer.id}
    await store.finish_call(
        first.id, status=CallStatus.COMPLETED, end_reason="done", ended_at=T0 + timedelta(hours=1)
    )
    assert [c.id for c in await store.served_calls()] == [newer.id]
    assert [c.id for c in await database.webhooks.owed_reports()] == [first.id]
    assert await database.analyses.owed_analyses() == [first.id]
    await database.webhooks.report_queued(first.id)
    assert await database.webhooks.owed_reports() == []


async def test_calls_stored_before_the_keys_are_keyed_once(database: Database) -> None:
    collection = CallDocument.get_pymongo_collection()
    ids = [PydanticObjectId() for _ in range(5)]
    await collection.insert_many(
        [
            {
                "_id": oid,
                "org_id": "org-a",
                "transport": "twilio",
                "call_sid": f"CA-before-{i}",
                "direction": "inbound",
                "status": "completed",
                "started_at": T0 + timedelta(seconds=i),
                "ended_at": T0 + timedelta(minutes=1),
                "report_pending": i == 0,
            }
            for i, oid in enumerate(ids)
        ]
    )
    await collection.database["migrations"].delete_one({"_id": BACKFILL})
    await collection.database["migrations"].delete_one({"_id": BACKFILL + ".claim"})
    now = datetime.now(UTC)
    assert await CallIndex().backfill(now=now) == 5
    assert await CallIndex().backfill(now=now) == 0
    assert await MigrationDocument.get(BACKFILL) is not None
    store = database.calls
    assert await _all_pages(store, CallFilter(org_id="org-a"), 2) == [str(i) for i in ids[::-1]]
    found = await store.get_call_by_sid("CA-before-3")
    assert found is not None and found.id == str(ids[3])
    assert [c.id for c in await database.webhooks.owed_reports()] == [str(ids[0])]


async def test_long_history_pages_pass_over_blocks_by_their_summaries(database: Database) -> None:
    """A history past one 4 096-entry unit (bulk loaded, as the bench does), a few calls
    stored late and a few not finished: rare and common filters, a deep cursor across the
    late entries and a window answer what the calls say, first read (summaries built)
    and again (summaries and blocks read, or kept in the process), and by a new process."""
    org = "org-long"
    statuses = ["completed"] * 8 + ["no-answer", "busy"]
    rows: list[dict[str, object]] = []
    for i in range(4400):
        started = T0 - timedelta(days=30) + timedelta(seconds=37 * i)
        rows.append(
            {
                "_id": PydanticObjectId(),
                "org_id": org,
                "transport": "twilio",
                "call_sid": f"CAbulk{i}",
                "from_number": "+15550001111",
                "to_number": "+15550002222",
                "direction": "outbound" if i % 3 == 0 else "inbound",
                "assistant_id": "asst-rare" if i % 700 == 350 else "asst-main",
                "metadata": {},
                "status": "failed" if i % 500 == 250 else statuses[i % 10],
                "started_at": started,
                "ended_at": started + timedelta(seconds=65),
                "report_pending": False,
                "analysis_pending": False,
                "analysis_gen": 0,
            }
        )
    entries = index_entries(
        [
            (org, str(r["_id"]), r["started_at"], r["assistant_id"], r["direction"], r["status"])  # type: ignore[misc]
            for r in rows
        ]
    )
    for row, entry in zip(rows, entries, strict=True):
        row["index_key"] = entry["_id"]
    calls = CallDocument.get_pymongo_collection()
    await calls.insert_many(rows)
    await calls.database[CALL_INDEX].insert_many(entries)
    store = database.calls
    middle = T0 - timedelta(days=30) + timedelta(seconds=37 * 2200)
    late: list[str] = []
    for i in range(6):  # late: older than calls stored before them; two left unfinished
        call = await store.create_call(
            _new(org, sid=f"CA-late{i}", assistant="asst-rare", direction=Direction.INBOUND),
            started_at=middle - timedelta(seconds=300 * i + 5),
        )
        late.append(call.id)
        if i >= 2:
            await store.finish_call(call.id, status=CallStatus.FAILED, end_reason="x", ended_at=T0)
    current = [
        await store.get_call(call_id, with_turns=False)
        for call_id in [str(r["_id"]) for r in rows] + late
    ]
    deep = CallFilter(org_id=org, started_before=middle)
    filters = [
        CallFilter(org_id=org, status=CallStatus.FAILED),
        CallFilter(org_id=org, assistant_id="asst-rare"),
        CallFilter(org_id=org, assistant_id="asst-none"),
        CallFilter(org_id=org, status=CallStatus.FAILED, direction=Direction.OUTBOUND),
        CallFilter(org_id=org, started_after=middle - timedelta(hours=1), started_before=middle),
        CallFilter(org_id=org, status=CallStatus.RINGING),
    ]
    for reader in (store, store, CallRepository()):
        for where in filters:
            assert await _all_pages(reader, where, 7) == _expected(current, where), where
        first = await reader.list_calls(CallFilter(org_id=org), limit=50)
        assert [c.id for c in first.items] == _expected(current, CallFilter(org_id=org))[:50]
        common = await reader.list_calls(
            CallFilter(org_id=org, status=CallStatus.NO_ANSWER), limit=50
        )
        want = _expected(current, CallFilter(org_id=org, status=CallStatus.NO_ANSWER))
        assert [c.id for c in common.items] == want[:50]
        # A deep cursor: the page after the first calls before the middle, late ones among.
        page = await reader.list_calls(deep, limit=20)
        ids = [c.id for c in page.items]
        page = await reader.list_calls(CallFilter(org_id=org), limit=20, cursor=page.next_cursor)
        ids += [c.id for c in page.items]
        assert ids == _expected(current, deep)[:40]
    stored = await calls.database[CALL_INDEX].count_documents({"_id": {"$regex": "^org-long:s"}})
    assert stored > 0  # the summaries were built and stored
