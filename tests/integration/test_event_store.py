"""The event sequence against FerretDB: places taken once across writers, read in order by
`_id` lookups, the head found by search in a fresh process, a fact published once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from storage import Database, EventRepository


def _org() -> str:
    return "org_" + uuid.uuid4().hex[:8]


async def _publish(
    repo: EventRepository, org: str, n: int, *, call: str = "c1", fresh: bool = False
) -> int:
    event = await repo.publish(
        key=f"{org}-{call}-{n}",
        org_id=org,
        call_id=call,
        type="call.turn",
        body=f'{{"n":{n}}}',
        at=datetime.now(UTC),
        fresh=fresh,
    )
    return event.seq


async def test_racing_writers_take_each_place_once_and_readers_see_every_event(
    database: Database,
) -> None:
    org = _org()
    writers = [EventRepository() for _ in range(4)]  # four gateways, each its own hints
    seqs = await asyncio.gather(
        *(_publish(writers[i % 4], org, i, call=f"c{i % 3}") for i in range(40))
    )
    assert sorted(seqs) == list(range(1, 41))
    reader = EventRepository()
    events, last = await reader.read_after(org, 0, limit=100)
    assert last == 40
    assert [e.seq for e in events] == list(range(1, 41))
    assert sorted(e.body for e in events) == sorted(f'{{"n":{i}}}' for i in range(40))
    assert await EventRepository().head(org) == 40  # a fresh process finds the head
    later, last = await reader.read_after(org, 40)
    assert later == [] and last == 40
    assert await EventRepository().head(_org()) == 0


async def test_a_fact_is_published_once(database: Database) -> None:
    org = _org()
    repo, other = EventRepository(), EventRepository()
    first = await _publish(repo, org, 7)
    again = await _publish(other, org, 7)
    assert first == again == 1
    racing = await asyncio.gather(*(_publish(EventRepository(), org, 8) for _ in range(5)))
    assert len(set(racing)) == 1
    # Published as new (not looked up first) although it was stored: the earlier stands.
    assert await _publish(other, org, 7, fresh=True) == first
    events, last = await repo.read_after(org, 0)
    assert [e.key for e in events] == [f"{org}-c1-7", f"{org}-c1-8"]
    assert last >= 3  # duplicates keep their places and are passed over


async def test_the_head_is_found_by_search_at_any_size(database: Database) -> None:
    org = _org()
    repo = EventRepository()
    for n in range(37):
        await _publish(repo, org, n)
    for fresh in range(3):
        assert await EventRepository().head(org) == 37 + fresh
        await _publish(EventRepository(), org, 100 + fresh)
    assert (await repo.get(org, 40)) is not None and (await repo.get(org, 41)) is None


async def test_events_queued_together_are_stored_together_around_another_writers_place(
    database: Database,
) -> None:
    """A process stores the events queued at once in one ordered insert; a place in the
    middle taken by another process keeps those stored before it, and the rest go after
    the head."""
    from storage.events import _events  # the collection, to take a place as another gateway

    org = _org()
    repo = EventRepository()
    assert await _publish(repo, org, 0) == 1  # this process's hint: the head is 1
    await _events().insert_one(
        {"_id": f"{org}:4", "seq": 4, "org_id": org, "call_id": "x", "type": "call.turn",
         "key": f"{org}-other", "at": datetime.now(UTC), "body": "{}"}
    )  # fmt: skip
    # 250 at once: more than one insert's worth (FerretDB honours `ordered` only within
    # its chunks of 100: a larger insert would store events past the taken place twice).
    seqs = await asyncio.gather(*(_publish(repo, org, n) for n in range(1, 251)))
    assert sorted(seqs) == [2, 3, *range(5, 253)]
    events, last = await EventRepository().read_after(org, 0, limit=500)
    assert last == 252 and [e.seq for e in events] == list(range(1, 253))
    mine = [e for e in events if e.key != f"{org}-other"]
    assert sorted(e.body for e in mine) == sorted(f'{{"n":{n}}}' for n in range(251))
    assert await repo.head(org) == 252  # nothing stored past the sequence's end


async def test_hundreds_published_at_once_by_racing_processes_take_each_place_once(
    database: Database,
) -> None:
    org = _org()
    writers = [EventRepository() for _ in range(3)]
    seqs = await asyncio.gather(
        *(_publish(writers[i % 3], org, i, call=f"c{i % 7}") for i in range(600))
    )
    assert sorted(seqs) == list(range(1, 601))
    events, last = await EventRepository().read_after(org, 0, limit=500)
    more, last = await EventRepository().read_after(org, last, limit=500)
    assert [e.seq for e in events + more] == list(range(1, 601)) and last == 600
