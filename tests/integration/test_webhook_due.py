"""The outbox's due rows (`webhook_due`) against the real FerretDB: what a claim reads, kept
in step with the deliveries, and repaired when a gateway died between two writes.

A crash is simulated by writing the rows collection directly (deleting a row, putting back
a row the dead gateway never deleted), through a second client on the same database.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from storage import Database, open_database
from storage.deliveries import Attempt
from tests.integration.test_webhook_outbox import FAST, Receiver, receiver
from webhooks.events import CALL_TURN
from webhooks.outbox import WebhookOutbox
from webhooks.ssrf import SsrfGuard


@dataclass
class Store:
    database: Database
    rows: AsyncCollection[dict[str, Any]]  # `webhook_due`, as another client sees it


@pytest.fixture
async def store(mongo_url: str) -> AsyncIterator[Store]:
    name = "test_" + uuid.uuid4().hex[:12]
    database = await open_database(mongo_url, name)
    raw: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url, tz_aware=True)
    try:
        yield Store(database, raw[name]["webhook_due"])
    finally:
        await raw.close()
        await database.close()


def new_outbox(database: Database, *, repair_s: float = 60.0) -> WebhookOutbox:
    return WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]),
        policy=FAST,
        timeout_s=2.0,
        poll_s=0.05,
        repair_s=repair_s,
    )


async def enqueue(
    database: Database, org_id: str, url: str, call_id: str, seq: int, now: datetime
) -> str:
    delivery_id = f"dlv_{call_id}_{seq}"
    assert await database.webhooks.enqueue(
        delivery_id=delivery_id, org_id=org_id, call_id=call_id, event=CALL_TURN, url=url,
        body=json.dumps({"id": delivery_id, "call": call_id, "seq": seq}), now=now, seq=seq,
    )  # fmt: skip
    return delivery_id


async def running(
    outboxes: list[WebhookOutbox],
    done: Callable[[], bool],
    rows: AsyncCollection[dict[str, Any]],
    timeout_s: float = 60,
) -> None:
    """Run the outboxes until `done()` and no due row is left (bounded): with no row, no
    outbox can claim a delivery again, so nothing more can be sent; the stored attempts
    (`delivered_once`) then show that none was sent twice."""
    tasks = [asyncio.create_task(o.run(), name=f"outbox-{i}") for i, o in enumerate(outboxes)]
    try:
        deadline = time.monotonic() + timeout_s
        while not done() or await rows.count_documents({}) > 0:
            assert time.monotonic() < deadline, "the outboxes did not get there in time"
            await asyncio.sleep(0.02)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for outbox in outboxes:
            await outbox.aclose()


async def delivered_once(database: Database, org_id: str, *ids: str) -> None:
    for delivery_id in ids:
        delivery = await database.webhooks.get(org_id, delivery_id)
        assert (delivery.status, delivery.attempt_count) == ("delivered", 1), delivery_id


def sent_seqs(rx: Receiver) -> list[tuple[str, int]]:
    return [(json.loads(r.body)["call"], json.loads(r.body)["seq"]) for r in rx.requests]


async def test_a_delivery_whose_row_was_lost_goes_out_after_the_repair(store: Store) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    async with receiver(lambda _id, _nth: 200) as rx:
        lost = await enqueue(database, org.id, rx.url, "call_a", 1, now)
        await store.rows.delete_one({"_id": lost})  # died between its two writes
        # The claim reads the rows only: the delivery is invisible to it ...
        assert await database.webhooks.claim(owner="gw", now=now, lease_s=30) is None
        # ... until an outbox's repair (on start) gives it its row back.
        await running([new_outbox(database)], lambda: len(rx.requests) >= 1, store.rows)
    assert rx.count() == {lost: 1}
    await delivered_once(database, org.id, lost)
    assert await store.rows.count_documents({}) == 0


async def test_the_repair_rows_pending_deliveries_and_only_those(store: Store) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    url = "http://127.0.0.1:9/"
    ids = [await enqueue(database, org.id, url, "call_a", seq, now) for seq in (1, 2, 3)]
    claimed = await database.webhooks.claim(owner="gw", now=now, lease_s=30)
    assert claimed is not None and claimed.id == ids[0]
    assert await database.webhooks.record_attempt(
        ids[0], owner="gw", lease_gen=claimed.lease_gen, status="delivered",
        attempt=Attempt(at=now, status_code=200, latency_ms=1.0, error=None),
        next_attempt_at=None,
    )  # fmt: skip
    await store.rows.delete_many({})  # as if stored before rows existed
    assert await database.webhooks.repair_due() == 2
    assert sorted(r["_id"] for r in await store.rows.find({}).to_list()) == ids[1:]
    assert await database.webhooks.repair_due() == 0  # nothing left to repair


async def test_a_stale_row_of_a_delivered_delivery_is_dropped_without_a_second_send(
    store: Store,
) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    async with receiver(lambda _id, _nth: 200) as rx:
        first = await enqueue(database, org.id, rx.url, "call_a", 1, now)
        stale = await store.rows.find_one({"_id": first})
        assert stale is not None
        await running([new_outbox(database)], lambda: len(rx.requests) >= 1, store.rows)
        # A gateway died after writing "delivered" and before deleting the row.
        await store.rows.insert_one(stale)
        second = await enqueue(database, org.id, rx.url, "call_a", 2, now)
        # The stale row holds the call's next delivery back only until it is claimed.
        await running([new_outbox(database)], lambda: len(rx.requests) >= 2, store.rows)
    assert rx.count() == {first: 1, second: 1}
    await delivered_once(database, org.id, first, second)
    assert sent_seqs(rx) == [("call_a", 1), ("call_a", 2)]
    assert await store.rows.count_documents({}) == 0


async def test_a_row_whose_enqueue_died_is_dropped_once_old(store: Store) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    async with receiver(lambda _id, _nth: 200) as rx:
        # The row of seq 1 was written, its delivery never: it holds seq 2 back while young.
        await store.rows.insert_one(
            {"_id": "dlv_call_a_1", "call_id": "call_a", "url": rx.url, "seq": 1,
             "next_attempt_at": now, "lease_until": datetime(1970, 1, 1, tzinfo=UTC),
             "lease_gen": 0, "queued_at": now - timedelta(seconds=5)},
        )  # fmt: skip
        second = await enqueue(database, org.id, rx.url, "call_a", 2, now)
        assert await database.webhooks.claim(owner="gw", now=now, lease_s=30) is None
        later = now + timedelta(minutes=1)
        assert await database.webhooks.claim(owner="gw", now=later, lease_s=30) is None
        claimed = await database.webhooks.claim(owner="gw", now=later, lease_s=30)
        assert claimed is not None and claimed.id == second
    assert await store.rows.count_documents({"_id": "dlv_call_a_1"}) == 0


async def test_one_claim_takes_the_first_of_each_call(store: Store) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    url = "http://127.0.0.1:9/"
    for call in ("call_a", "call_b", "call_c"):
        for seq in (1, 2, 3):
            await enqueue(database, org.id, url, call, seq, now)
    taken = await database.webhooks.claim_many(owner="gw", now=now, lease_s=30, limit=8)
    assert sorted(d.id for d in taken) == [f"dlv_call_{c}_1" for c in "abc"]
    assert await database.webhooks.claim_many(owner="gw", now=now, lease_s=30, limit=8) == []


async def test_two_outboxes_keep_each_calls_order_and_send_each_attempt_once(
    store: Store,
) -> None:
    """Every delivery fails its first attempt: each goes out exactly twice (never one
    attempt by both outboxes), and a call's deliveries go out one after another."""
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    calls, per_call = ("call_a", "call_b", "call_c", "call_d"), 5
    async with receiver(lambda _id, nth: 500 if nth == 1 else 200) as rx:
        ids = [
            await enqueue(database, org.id, rx.url, call, seq, now)
            for seq in range(1, per_call + 1)
            for call in calls
        ]
        outboxes = [new_outbox(database), new_outbox(database)]
        await running(outboxes, lambda: len(rx.requests) >= 2 * len(ids), store.rows)
    assert rx.count() == dict.fromkeys(ids, 2)
    for call in calls:
        # Its deliveries, in the order they reached the receiver: 1, 1, 2, 2, ... (a
        # delivery's retry goes out before the next one's first attempt).
        order = [seq for c, seq in sent_seqs(rx) if c == call]
        assert order == [seq for seq in range(1, per_call + 1) for _ in range(2)]
    for delivery_id in ids:
        delivery = await database.webhooks.get(org.id, delivery_id)
        assert [a.status_code for a in delivery.attempts] == [500, 200]
        assert (delivery.status, delivery.attempt_count) == ("delivered", 2)
    assert await store.rows.count_documents({}) == 0


async def test_a_redelivery_gets_a_row_and_goes_out(store: Store) -> None:
    database = store.database
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    async with receiver(lambda _id, _nth: 200) as rx:
        delivery_id = await enqueue(database, org.id, rx.url, "call_a", 1, now)
        await running([new_outbox(database)], lambda: len(rx.requests) >= 1, store.rows)
        assert await store.rows.count_documents({}) == 0
        await database.webhooks.redeliver(org.id, delivery_id, now=datetime.now(UTC))
        assert await store.rows.count_documents({"_id": delivery_id}) == 1
        await running([new_outbox(database)], lambda: len(rx.requests) >= 2, store.rows)
    assert rx.count() == {delivery_id: 2}
    delivery = await database.webhooks.get(org.id, delivery_id)
    assert delivery.status == "delivered" and [a.status_code for a in delivery.attempts] == [
        200,
        200,
    ]
    assert await store.rows.count_documents({}) == 0
