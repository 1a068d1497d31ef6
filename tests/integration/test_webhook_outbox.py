"""The webhook outbox against the real FerretDB and a real HTTP receiver on loopback.

The receiver is a small HTTP/1.1 server on 127.0.0.1:0 (asyncio streams) that answers
each request with the status its script gives for (delivery id, nth request of that id),
and keeps every request it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from storage import AssistantConfig, CallStatus, Database, Direction, NewCall
from storage.deliveries import Attempt
from tests.net import free_port
from webhooks.events import CALL_ENDED
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from webhooks.ssrf import SsrfGuard

FAST = RetryPolicy(base_s=0.05, cap_s=0.2, max_attempts=6)
Script = Callable[[str, int], int]


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def delivery_id(self) -> str:
        return self.headers[ID_HEADER.lower()]


@dataclass
class Receiver:
    script: Script
    url: str = ""
    requests: list[Received] = field(default_factory=list)

    def count(self) -> Counter[str]:
        return Counter(r.delivery_id for r in self.requests)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ln)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(headers, body)
            self.requests.append(received)
            nth = self.count()[received.delivery_id]
            status = self.script(received.delivery_id, nth)
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def receiver(script: Script) -> AsyncIterator[Receiver]:
    rx = Receiver(script)
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rx.url = f"http://127.0.0.1:{port}/hooks/calls"
    try:
        yield rx
    finally:
        server.close()
        await server.wait_closed()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"


def new_outbox(
    database: Database,
    *,
    policy: RetryPolicy = FAST,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> WebhookOutbox:
    return WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]),
        policy=policy,
        timeout_s=2.0,
        poll_s=0.02,
        clock=clock,
    )


async def finished_call(database: Database, org_id: str, url: str, n: int = 0) -> str:
    """A call of an assistant with webhook `url`, finished through the call repository."""
    config = AssistantConfig(name="Support", system_prompt="Help.", webhook_url=url)
    assistant = await database.assistants.create(org_id, config)
    started = datetime.now(UTC) - timedelta(seconds=30)
    call = await database.calls.create_call(
        NewCall(
            org_id=org_id,
            transport="twilio",
            call_sid=f"CA{n:032d}",
            from_number="+15550001111",
            to_number="+15550002222",
            direction=Direction.INBOUND,
            assistant_id=assistant.id,
            metadata={"order": "A-17"},
        ),
        started_at=started,
    )
    await database.calls.add_turn(call.id, speaker="agent", text="Hello", start_ms=0, end_ms=900)
    await database.calls.add_turn(call.id, speaker="caller", text="Bye", start_ms=1200, end_ms=1800)
    await database.calls.finish_call(
        call.id,
        status=CallStatus.COMPLETED,
        end_reason="caller-hangup",
        ended_at=started + timedelta(seconds=20),
    )
    return call.id


async def drive(outbox: WebhookOutbox, done: Callable[[], bool], timeout_s: float = 15) -> None:
    """Step the outbox (resting briefly when idle) until `done()`."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the outbox did not get there in time"
        if not await outbox.step():
            await asyncio.sleep(0.02)


async def test_a_finished_call_is_delivered_once_after_two_failures(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, nth: 500 if nth <= 2 else 200) as rx:
        call_id = await finished_call(database, org.id, rx.url)
        outbox = new_outbox(database)
        try:
            await drive(outbox, lambda: len(rx.requests) >= 3)
            for _ in range(5):  # nothing more to do: no second delivery, no more attempts
                assert not await outbox.step()
        finally:
            await outbox.aclose()

    deliveries = await database.webhooks.list(org.id)
    assert len(deliveries) == 1  # exactly one delivery per finished call
    (delivery,) = deliveries
    assert delivery.call_id == call_id and delivery.event == CALL_ENDED
    assert delivery.status == "delivered" and delivery.delivered_at is not None
    assert [a.status_code for a in delivery.attempts] == [500, 500, 200]
    assert all(a.error is None and a.latency_ms > 0 for a in delivery.attempts)
    assert len(rx.requests) == 3 and {r.delivery_id for r in rx.requests} == {delivery.id}

    secret = await database.webhooks.webhook_secret(org.id)
    assert secret == await database.webhooks.webhook_secret(org.id)
    for request in rx.requests:
        verify(
            secret,
            timestamp=request.headers[TIMESTAMP_HEADER.lower()],
            body=request.body,
            signature=request.headers[SIGNATURE_HEADER.lower()],
            now=time.time(),
        )
        assert request.headers["content-type"] == "application/json"
    event = json.loads(rx.requests[-1].body)
    assert event["id"] == delivery.id and event["type"] == "call.ended"
    assert event["call"]["id"] == call_id and event["call"]["status"] == "completed"
    assert event["call"]["duration_s"] == 20.0 and event["call"]["metadata"] == {"order": "A-17"}
    assert [t["text"] for t in event["call"]["transcript"]] == ["Hello", "Bye"]

    # Finishing the call again owes nothing more.
    await database.calls.finish_call(
        call_id, status=CallStatus.FAILED, end_reason="again", ended_at=datetime.now(UTC)
    )
    outbox = new_outbox(database)
    try:
        assert not await outbox.step()
    finally:
        await outbox.aclose()
    assert len(await database.webhooks.list(org.id)) == 1


async def _only_delivery(database: Database, org_id: str) -> str:
    (delivery,) = await database.webhooks.list(org_id)
    return delivery.id


async def test_a_4xx_fails_for_good_after_one_attempt(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 410) as rx:
        await finished_call(database, org.id, rx.url)
        outbox = new_outbox(database)
        try:
            await drive(outbox, lambda: len(rx.requests) >= 1)
            await asyncio.sleep(0.3)  # longer than any backoff of FAST
            for _ in range(3):
                assert not await outbox.step()
        finally:
            await outbox.aclose()
    delivery = await database.webhooks.get(org.id, await _only_delivery(database, org.id))
    assert delivery.status == "failed" and len(rx.requests) == 1
    assert [a.status_code for a in delivery.attempts] == [410]


async def test_408_and_429_are_retried(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    codes = {1: 408, 2: 429, 3: 503}
    async with receiver(lambda _id, nth: codes.get(nth, 204)) as rx:
        await finished_call(database, org.id, rx.url)
        outbox = new_outbox(database)
        try:
            await drive(outbox, lambda: len(rx.requests) >= 4)
        finally:
            await outbox.aclose()
    delivery = await database.webhooks.get(org.id, await _only_delivery(database, org.id))
    assert delivery.status == "delivered"
    assert [a.status_code for a in delivery.attempts] == [408, 429, 503, 204]


async def test_max_attempts_bounds_the_retries(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    policy = RetryPolicy(base_s=0.05, cap_s=0.1, max_attempts=3)
    async with receiver(lambda _id, _nth: 500) as rx:
        await finished_call(database, org.id, rx.url)
        outbox = new_outbox(database, policy=policy)
        try:
            await drive(outbox, lambda: len(rx.requests) >= 3)
            await asyncio.sleep(0.3)
            for _ in range(3):
                assert not await outbox.step()
        finally:
            await outbox.aclose()
    delivery = await database.webhooks.get(org.id, await _only_delivery(database, org.id))
    assert delivery.status == "failed" and delivery.attempt_count == 3
    assert [a.status_code for a in delivery.attempts] == [500, 500, 500]
    assert len(rx.requests) == 3


async def test_a_refused_connection_is_retried_and_recorded(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    await finished_call(database, org.id, closed_port_url())
    outbox = new_outbox(database, policy=RetryPolicy(base_s=0.05, cap_s=0.1, max_attempts=2))
    delivery_id = ""
    try:
        assert await outbox.step()  # queued and first attempt
        delivery_id = await _only_delivery(database, org.id)
        first = await database.webhooks.get(org.id, delivery_id)
        assert first.status == "pending" and first.next_attempt_at > first.attempts[0].at
        deadline = time.monotonic() + 10
        while (await database.webhooks.get(org.id, delivery_id)).status == "pending":
            assert time.monotonic() < deadline
            if not await outbox.step():
                await asyncio.sleep(0.02)
    finally:
        await outbox.aclose()
    delivery = await database.webhooks.get(org.id, delivery_id)
    assert delivery.status == "failed"  # max_attempts=2
    assert [a.status_code for a in delivery.attempts] == [None, None]
    assert [a.error for a in delivery.attempts] == ["connection refused", "connection refused"]


async def test_an_unsafe_url_is_refused_at_delivery_without_a_request(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        await finished_call(database, org.id, rx.url)
        outbox = WebhookOutbox(
            webhooks=database.webhooks,
            calls=database.calls,
            assistants=database.assistants,
            guard=SsrfGuard(),  # loopback not allowed here
            policy=FAST,
        )
        try:
            assert await outbox.step()
        finally:
            await outbox.aclose()
    delivery = await database.webhooks.get(org.id, await _only_delivery(database, org.id))
    assert rx.requests == [] and delivery.status == "failed"
    assert delivery.attempts[0].error == "refused: not a public address"


@asynccontextmanager
async def _misbehaving_server(*, answer: bytes | None) -> AsyncIterator[int]:
    """A server on 127.0.0.1 that reads a request (or what a TLS client sends first) and
    answers `answer`, or (None) says nothing until the client gives up."""
    quiet: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is None:
            quiet.append(writer)
            return
        with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
            # A TLS ClientHello has no blank line: it is answered after a second.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in quiet:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("scheme", "answer", "category", "detail"),
    [
        ("https", b"HTTP/1.1 400 Bad Request\r\n\r\n", "tls error", "SSL"),
        ("http", None, "timeout", "no answer within"),
        ("http", b"not http at all\r\n\r\n", "protocol error", "RemoteProtocolError"),
    ],
)
async def test_an_attempts_error_is_a_short_category_and_its_detail_is_logged(
    database: Database,
    caplog: pytest.LogCaptureFixture,
    scheme: str,
    answer: bytes | None,
    category: str,
    detail: str,
) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with _misbehaving_server(answer=answer) as port:
        await finished_call(database, org.id, f"{scheme}://127.0.0.1:{port}/hook")
        outbox = new_outbox(database)
        try:
            with caplog.at_level(logging.INFO, logger="webhooks.outbox"):
                assert await outbox.step()
        finally:
            await outbox.aclose()
    delivery = await database.webhooks.get(org.id, await _only_delivery(database, org.id))
    assert [a.error for a in delivery.attempts] == [category]
    (logged,) = [r for r in caplog.records if r.getMessage() == "webhook attempt"]
    assert logged.error == category and detail in logged.error_detail  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- leases


async def enqueue(database: Database, org_id: str, url: str, n: int, now: datetime) -> list[str]:
    ids = [f"dlv_test_{i}" for i in range(n)]
    for i, delivery_id in enumerate(ids):
        assert await database.webhooks.enqueue(
            delivery_id=delivery_id,
            org_id=org_id,
            call_id=f"call_{i}",
            event=CALL_ENDED,
            url=url,
            body=json.dumps({"id": delivery_id}),
            now=now,
        )
    assert not await database.webhooks.enqueue(  # once per id
        delivery_id=ids[0], org_id=org_id, call_id="x", event=CALL_ENDED, url=url, body="{}",
        now=now,
    )  # fmt: skip
    return ids


async def test_concurrent_claims_take_each_delivery_once(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    now = datetime.now(UTC)
    ids = await enqueue(database, org.id, "http://127.0.0.1:9/", 8, now)
    claims = await asyncio.gather(
        *(database.webhooks.claim(owner=f"gw-{i % 2}", now=now, lease_s=60) for i in range(16))
    )
    taken = [c.id for c in claims if c is not None]
    assert sorted(taken) == sorted(ids)  # every delivery once, none twice


async def test_two_gateways_send_every_attempt_once(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, nth: 500 if nth == 1 else 200) as rx:
        for n in range(6):
            await finished_call(database, org.id, rx.url, n)
        gateways = [new_outbox(database), new_outbox(database)]
        tasks = [asyncio.create_task(g.run(), name=f"outbox-{i}") for i, g in enumerate(gateways)]
        try:
            deadline = time.monotonic() + 20
            while len(rx.requests) < 12 or any(
                d.status == "pending" for d in await database.webhooks.list(org.id)
            ):
                assert time.monotonic() < deadline, rx.count()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # any duplicate attempt would arrive now
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for g in gateways:
                await g.aclose()
    deliveries = await database.webhooks.list(org.id)
    assert len(deliveries) == 6  # one per call although both gateways queued reports
    assert set(rx.count().values()) == {2}  # each: one 500, one 200; never sent by both
    for delivery in deliveries:
        assert delivery.status == "delivered"
        assert [a.status_code for a in delivery.attempts] == [500, 200]


async def test_a_dead_owners_delivery_is_claimed_again_after_its_lease(
    database: Database,
) -> None:
    org = await database.accounts.ensure_organization("acme")
    start = datetime.now(UTC)
    clock = [start]
    async with receiver(lambda _id, _nth: 200) as rx:
        (delivery_id,) = await enqueue(database, org.id, rx.url, 1, start)
        dead = await database.webhooks.claim(owner="gw-dead", now=start, lease_s=30)
        assert dead is not None and dead.id == delivery_id  # ... and it never records
        survivor = new_outbox(database, clock=lambda: clock[0])
        try:
            clock[0] = start + timedelta(seconds=29)
            assert not await survivor.step()  # still leased
            assert rx.requests == []
            clock[0] = start + timedelta(seconds=31)
            assert await survivor.step()
        finally:
            await survivor.aclose()
        assert rx.count() == Counter({delivery_id: 1})
    delivery = await database.webhooks.get(org.id, delivery_id)
    assert delivery.status == "delivered" and [a.status_code for a in delivery.attempts] == [200]
    # The dead owner wakes up: its late outcome is refused.
    late = Attempt(at=start, status_code=500, latency_ms=1.0, error=None)
    assert not await database.webhooks.record_attempt(
        delivery_id, owner="gw-dead", lease_gen=dead.lease_gen, attempt=late, status="pending",
        next_attempt_at=start,
    )  # fmt: skip
    assert await database.webhooks.get(org.id, delivery_id) == delivery


async def test_a_stale_owner_cannot_record_after_losing_its_lease(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    start = datetime.now(UTC)
    (delivery_id,) = await enqueue(database, org.id, "http://127.0.0.1:9/", 1, start)
    a = await database.webhooks.claim(owner="gw-a", now=start, lease_s=5)
    assert a is not None and a.lease_owner == "gw-a"
    assert await database.webhooks.claim(owner="gw-b", now=start, lease_s=5) is None
    later = start + timedelta(seconds=6)
    b = await database.webhooks.claim(owner="gw-b", now=later, lease_s=5)
    assert b is not None and b.lease_gen > a.lease_gen
    before = await database.webhooks.get(org.id, delivery_id)

    attempt = Attempt(at=later, status_code=200, latency_ms=3.0, error=None)
    assert not await database.webhooks.record_attempt(
        delivery_id, owner="gw-a", lease_gen=a.lease_gen, attempt=attempt, status="delivered",
        next_attempt_at=None,
    )  # fmt: skip
    assert not await database.webhooks.record_attempt(  # nor by naming b's lease
        delivery_id, owner="gw-a", lease_gen=b.lease_gen, attempt=attempt, status="delivered",
        next_attempt_at=None,
    )  # fmt: skip
    assert await database.webhooks.get(org.id, delivery_id) == before  # nothing changed
    assert before.attempts == () and before.lease_owner == "gw-b"

    assert await database.webhooks.record_attempt(
        delivery_id, owner="gw-b", lease_gen=b.lease_gen, attempt=attempt, status="delivered",
        next_attempt_at=None,
    )  # fmt: skip
    after = await database.webhooks.get(org.id, delivery_id)
    assert after.status == "delivered" and after.attempt_count == 1 and after.lease_owner is None
    assert not await database.webhooks.record_attempt(  # and only once
        delivery_id, owner="gw-b", lease_gen=b.lease_gen, attempt=attempt, status="delivered",
        next_attempt_at=None,
    )  # fmt: skip


async def test_a_named_host_is_reached_at_the_address_the_guard_checked(
    database: Database,
) -> None:
    """A host name allowed by address is resolved once, by the guard, and the request goes
    to that address with the name in its Host header (no second lookup to rebind)."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)}
    except OSError:
        addresses = set()
    if "127.0.0.1" not in addresses:
        pytest.skip(f"this machine's name {name!r} does not resolve to 127.0.0.1")
    org = await database.accounts.ensure_organization("acme")
    async with receiver(lambda _id, _nth: 200) as rx:
        port = rx.url.rsplit(":", 1)[1].split("/", 1)[0]
        await finished_call(database, org.id, f"http://{name}:{port}/hooks/calls")
        outbox = WebhookOutbox(
            webhooks=database.webhooks, calls=database.calls, assistants=database.assistants,
            guard=SsrfGuard(["127.0.0.0/8"]), policy=FAST,
            timeout_s=2.0, poll_s=0.02,
        )  # fmt: skip
        try:
            await drive(outbox, lambda: len(rx.requests) >= 1)
        finally:
            await outbox.aclose()
    assert rx.requests[0].headers["host"] == f"{name}:{port}"
    (delivery,) = await database.webhooks.list(org.id)
    assert delivery.status == "delivered"


async def test_an_outbox_cancelled_as_it_is_woken_stops(database: Database) -> None:
    """Shutdown cancels the outbox; a call finishing at that moment (a poke) must not keep
    it running (`asyncio.wait_for` on 3.11 swallows a cancellation that meets a wake-up)."""
    outbox = WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]),
        policy=FAST,
        poll_s=60.0,  # after its first round it waits for a wake-up
    )
    try:
        for _ in range(5):
            task = asyncio.create_task(outbox.run(), name="outbox")
            deadline = time.monotonic() + 30
            while not outbox.waiting():  # its first round is done
                assert time.monotonic() < deadline, "the outbox never finished a round"
                await asyncio.sleep(0.01)
            outbox.poke()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=30)
            if not done:  # stop it for good before failing
                task.cancel()
                await asyncio.wait({task}, timeout=30)
            assert done, "the cancelled outbox went on running"
    finally:
        await outbox.aclose()
