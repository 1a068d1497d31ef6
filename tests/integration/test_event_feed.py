"""The event feed in one process against FerretDB: an event this process publishes reaches
its subscribers at once (no poll), another gateway's event is found by the poller and kept
in order, a subscriber that resumes reads what it missed, one that does not read is dropped
without holding the others, and the poller stops with its last subscriber."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from gateway.event_feed import EventFeed, StreamEnded, Subscription
from storage import Database, EventRecord, EventRepository
from storage.documents import CallDocument
from storage.events import EVENTS

ORG = "org_feed"


async def _publish(repo: EventRepository, n: int, *, org: str = ORG) -> EventRecord:
    return await repo.publish(
        key=f"{org}-c1-{n}-{time.time_ns()}",
        org_id=org,
        call_id=f"c{n % 2}",
        type="call.turn",
        body=f'{{"n":{n}}}',
        at=datetime.now(UTC),
    )


async def _take(sub: Subscription, n: int) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(30):
        while len(seqs) < n:
            seqs += [e.seq for e in await sub.next(wait_s=30)]
    return seqs


async def test_published_events_arrive_at_once_and_others_by_the_poller(
    database: Database,
) -> None:
    # A poll every hour: within this test, only `published()` can bring an event.
    feed = EventFeed(database.events, poll_s=3600, buffer=10)
    other_gateway = EventRepository()
    try:
        sub = await feed.subscribe(ORG)
        mine = await _publish(database.events, 1)
        feed.published(mine)
        assert await _take(sub, 1) == [mine.seq]
        theirs = await _publish(other_gateway, 2)  # stored elsewhere: nobody calls published()
        mine = await _publish(database.events, 3)
        feed.published(mine)  # not the next place: the poller reads both, in order
        assert await _take(sub, 2) == [theirs.seq, mine.seq]
        one_call = await feed.subscribe(ORG, after=0, call_id="c1")  # resumes from the start
        assert await _take(one_call, 2) == [1, 3]
        assert feed.pollers == 1  # one per organisation, however many subscribers
        sub.close()
        one_call.close()
        for _ in range(3000):  # the poller sees it has no one left and stops
            if not feed.pollers:
                break
            await asyncio.sleep(0.01)
        assert feed.pollers == 0
    finally:
        await feed.aclose()


async def test_a_subscriber_that_does_not_read_is_dropped_and_the_other_goes_on(
    database: Database,
) -> None:
    dropped: list[int] = []
    feed = EventFeed(database.events, poll_s=3600, buffer=3, on_drop=lambda: dropped.append(1))
    try:
        idle, reading = await feed.subscribe(ORG), await feed.subscribe(ORG)
        got: list[int] = []
        for n in range(6):
            event = await _publish(database.events, n)
            feed.published(event)
            got += await _take(reading, 1)
        assert len(got) == 6 and got == sorted(got)
        assert dropped == [1] and idle.dropped.is_set()
        assert len(await idle.next(wait_s=1)) == 3  # what it held, then the end
        with pytest.raises(StreamEnded):
            await idle.next(wait_s=1)
    finally:
        await feed.aclose()
    with pytest.raises(StreamEnded):
        await reading.next(wait_s=1)  # closed at shutdown


async def test_catching_up_over_other_calls_events_leaves_time_for_heartbeats(
    database: Database,
) -> None:
    """A `?call_id=` stream resuming from 0 over many events of other calls: `next()`
    answers [] (a heartbeat) once `wait_s` has passed, rather than reading every batch
    first while the client hears nothing (proxies cut such streams)."""
    org = "org_catch_up"
    for n in range(450):  # more than two catch-up batches, all of call c0
        await _publish(database.events, 2 * n, org=org)
    wanted = await _publish(database.events, 1, org=org)  # call c1
    feed = EventFeed(database.events, poll_s=3600, buffer=10)
    try:
        sub = await feed.subscribe(org, after=0, call_id="c1")
        replies = []
        async with asyncio.timeout(60):
            while True:
                events = await sub.next(wait_s=0.0)  # any batch read passes the bound
                replies.append([e.seq for e in events])
                if events:
                    break
        assert replies[-1] == [wanted.seq]
        assert replies[:-1] and all(r == [] for r in replies[:-1])  # heartbeats came first
        sub.close()
    finally:
        await feed.aclose()


async def _malformed(org: str, seq: int) -> None:
    """A stored event at place `seq` with no body (written by hand, or by another version)."""
    events = CallDocument.get_pymongo_collection().database[EVENTS]
    await events.insert_one(
        {"_id": f"{org}:{seq}", "seq": seq, "org_id": org, "call_id": "c1", "type": "call.turn"}
    )


async def test_a_malformed_stored_event_is_skipped_and_the_stream_goes_on(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    org = "org_malformed"
    feed = EventFeed(database.events, poll_s=0.05, buffer=50)
    other_gateway = EventRepository()  # stores events this feed only finds by polling
    try:
        first = await _publish(other_gateway, 1, org=org)
        live = await feed.subscribe(org)
        await _malformed(org, first.seq + 1)
        later = [await _publish(other_gateway, n, org=org) for n in range(2, 5)]
        assert [e.seq for e in later] == [first.seq + 2, first.seq + 3, first.seq + 4]
        assert await _take(live, 3) == [e.seq for e in later]  # the poller lives on
        resumed = await feed.subscribe(org, after=0)  # catching up over it, too
        assert await _take(resumed, 4) == [first.seq, *(e.seq for e in later)]
        skipped = [r for r in caplog.records if "cannot be read: skipped" in r.getMessage()]
        assert skipped and all(getattr(r, "org_id", None) == org for r in skipped)
        assert f"event {first.seq + 1} " in skipped[0].getMessage()
        live.close()
        resumed.close()
    finally:
        await feed.aclose()
