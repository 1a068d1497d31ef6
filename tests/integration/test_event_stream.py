"""`GET /events` against real gateway processes on the session's FerretDB: events stored
in the database (published here, as another gateway's call publisher would) reach SSE
clients in order with their ids; `?call_id=` filters; a reconnect with Last-Event-ID misses
nothing and repeats nothing; a client on another gateway sees the same events; the key is
checked; a bad Last-Event-ID is a 400; a client that never reads is dropped while another
keeps receiving; idle streams get heartbeats; SIGTERM ends open streams cleanly."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from storage import CallRecord, Database, NewCall, open_database
from storage.models import Direction
from tests.webhook_receiver import run_webhook_receiver

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(240)

ENV: dict[str, str | None] = {
    "EVENT_POLL_S": "0.1",
    "EVENT_HEARTBEAT_S": "0.3",
    "EVENT_CLIENT_BUFFER": "20",
}


_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Sse:
    id: int
    event: str
    data: str


class SseClient:
    """An SSE client over httpx streaming: parses events (and counts comments) as they
    come, until the stream ends (`ended` then says whether it ended cleanly)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[Sse] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.ended: str | None = None  # "clean" or the error's text
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name="sse-client")

    async def _lines(self) -> AsyncIterator[str]:
        """The stream's lines, split only where text/event-stream ends a line (CRLF, CR, LF):
        httpx's `aiter_lines` also splits U+2028, U+0085 ... as `str.splitlines` does."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        pending = ""
        async for chunk in self.response.aiter_bytes():
            pending += decoder.decode(chunk)
            held = pending.endswith("\r")  # its LF may be in the next chunk
            *lines, pending = _LINE_END.split(pending[:-1] if held else pending)
            pending += "\r" if held else ""
            for line in lines:
                yield line

    async def _read(self) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in self._lines():
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "":
                    if "id" in fields:
                        self.events.append(Sse(int(fields["id"]), fields["event"], fields["data"]))
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    if name == "retry":
                        self.retry = int(value)
                    elif name == "data" and "data" in fields:
                        fields["data"] += "\n" + value
                    else:
                        fields[name] = value
                self._changed.set()
            self.ended = "clean"
        except httpx.HTTPError as exc:
            self.ended = f"{type(exc).__name__}: {exc}"
        self._changed.set()

    async def until(self, what: str, check: object, within_s: float = 30) -> None:
        assert callable(check)
        deadline = time.monotonic() + within_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}: {self.events[-3:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def events_until(self, n: int, within_s: float = 30) -> list[Sse]:
        await self.until(f"{n} events", lambda: len(self.events) >= n, within_s)
        return self.events[:n]

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def sse(
    http: httpx.AsyncClient,
    key: str,
    params: dict[str, str] | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SseClient]:
    async with http.stream(
        "GET", "/events", params=params, headers={"x-api-key": key, **(headers or {})}
    ) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        client = SseClient(response)
        try:
            yield client
        finally:
            await client.aclose()


class Publisher:
    """Publishes events of one organisation straight into the store (standing in for a
    gateway's call publisher) and knows the calls it made."""

    def __init__(self, database: Database, org_id: str) -> None:
        self.database = database
        self.org_id = org_id
        self.sent: list[int] = []

    async def call(self) -> CallRecord:
        return await self.database.calls.create_call(
            NewCall(
                org_id=self.org_id,
                transport="twilio",
                call_sid="CA" + uuid.uuid4().hex,
                from_number="+15550001111",
                to_number="+15550002222",
                direction=Direction.INBOUND,
            ),
            started_at=datetime.now(UTC),
        )

    async def publish(self, call_id: str, n: int, *, pad: int = 0, body: str | None = None) -> int:
        event = await self.database.events.publish(
            key=f"{call_id}_call_turn_{n}",
            org_id=self.org_id,
            call_id=call_id,
            type="call.turn",
            body=body or f'{{"call_id":"{call_id}","n":{n},"pad":"{"x" * pad}"}}',
            at=datetime.now(UTC),
        )
        self.sent.append(event.seq)
        return event.seq


@contextlib.asynccontextmanager
async def publisher(mongo_url: str, gateway: GatewayProcess) -> AsyncIterator[Publisher]:
    database = await open_database(mongo_url, gateway.db_name)
    try:
        key = await database.accounts.find_active_key(gateway.api_key)
        assert key is not None
        yield Publisher(database, key.org_id)
    finally:
        await database.close()


def _metric(gateway: GatewayProcess, name: str) -> int:
    text = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    match = re.search(rf"^voice_gateway_{name} (\d+)$", text, re.MULTILINE)
    assert match is not None, name
    return int(match.group(1))


@pytest.fixture(scope="module")
def gateway(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(mongo_url, tmp_path_factory.mktemp("events"), ENV) as process:
        yield process


async def test_events_arrive_in_order_filtered_and_resume_misses_nothing(
    mongo_url: str, gateway: GatewayProcess
) -> None:
    key = gateway.api_key
    async with (
        publisher(mongo_url, gateway) as pub,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
    ):
        one, two = await pub.call(), await pub.call()
        before = await pub.publish(one.id, 0)  # before anyone listens: not sent live
        async with sse(http, key) as live, sse(http, key, {"call_id": one.id}) as only_one:
            for n in range(1, 7):
                await pub.publish((one if n % 2 else two).id, n)
            got = await live.events_until(6)
            assert [e.id for e in got] == pub.sent[1:]
            assert [e.id for e in got] == list(range(before + 1, before + 7))
            assert {e.event for e in got} == {"call.turn"}
            assert got[0].data == f'{{"call_id":"{one.id}","n":1,"pad":""}}'
            mine = await only_one.events_until(3)
            assert [e.id for e in mine] == [before + 1, before + 3, before + 5]
            assert live.retry == 3000
        last_seen = got[-1].id
        # Missed while disconnected: sent after the reconnect, then live ones; none twice.
        for n in range(7, 10):
            await pub.publish(one.id, n)
        async with sse(http, key, headers={"Last-Event-ID": str(last_seen)}) as resumed:
            await resumed.events_until(3)
            await pub.publish(two.id, 10)
            got = await resumed.events_until(4)
            assert [e.id for e in got] == list(range(last_seen + 1, last_seen + 5))
        # The query parameter for clients that cannot set headers; the header wins.
        params = {"last_event_id": str(before), "call_id": two.id}
        async with sse(http, key, params) as by_query:
            got = await by_query.events_until(4)
            assert [e.id for e in got] == [before + 2, before + 4, before + 6, last_seen + 4]
        async with sse(http, key, params, headers={"Last-Event-ID": str(last_seen)}) as both:
            assert [e.id for e in await both.events_until(1)] == [last_seen + 4]
        async with sse(http, key, {"last_event_id": "0"}) as replay:
            got = await replay.events_until(len(pub.sent))
            assert [e.id for e in got] == sorted(pub.sent) == list(range(1, len(pub.sent) + 1))


async def test_a_body_with_unicode_line_separators_arrives_as_one_json(
    mongo_url: str, gateway: GatewayProcess
) -> None:
    """Bodies are JSON with non-ASCII left as is: U+2028, U+2029, U+0085 and \\x1c are no SSE
    line ends, so they stay inside one `data:` line and the JSON parses."""
    async with (
        publisher(mongo_url, gateway) as pub,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
    ):
        call = await pub.call()
        turn = {"call_id": call.id, "text": "one\u2028two\u2029three\u0085four\x1cfive"}
        body = json.dumps(turn, ensure_ascii=False)
        async with sse(http, gateway.api_key, {"call_id": call.id}) as reader:
            seq = await pub.publish(call.id, 0, body=body)
            [got] = await reader.events_until(1)
    assert got.id == seq
    assert json.loads(got.data) == turn


async def test_refusals_are_json_errors(mongo_url: str, gateway: GatewayProcess) -> None:
    async with (
        publisher(mongo_url, gateway) as pub,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
    ):
        call = await pub.call()
        head = await pub.publish(call.id, 0)
        cases: list[tuple[dict[str, str], dict[str, str], int, str]] = [
            ({}, {}, 401, "unauthorized"),
            ({"x-api-key": "vg_wrong" + uuid.uuid4().hex}, {}, 401, "unauthorized"),
            ({"Last-Event-ID": "abc"}, {}, 400, "bad_request"),
            ({"Last-Event-ID": "-1"}, {}, 400, "bad_request"),
            ({"Last-Event-ID": str(head + 1)}, {}, 400, "bad_request"),
            ({}, {"last_event_id": "1.5"}, 400, "bad_request"),
            ({}, {"call_id": "nope"}, 404, "not_found"),
            ({}, {"since": "1"}, 422, "invalid_request"),
        ]
        for headers, params, status, code in cases:
            if status != 401:
                headers = {"x-api-key": gateway.api_key, **headers}
            answer = await http.get("/events", headers=headers, params=params)
            assert answer.status_code == status, (headers, params, answer.text)
            assert answer.json()["error"]["code"] == code
        spec = (await http.get("/openapi.json")).json()
        assert "Last-Event-ID" in str(spec["paths"]["/events"]["get"]["parameters"])


async def test_a_client_that_never_reads_is_dropped_and_others_keep_receiving(
    mongo_url: str, gateway: GatewayProcess
) -> None:
    key = gateway.api_key
    dropped_before = await asyncio.to_thread(_metric, gateway, "event_streams_dropped_total")
    # A small receive buffer so the kernel holds little for the client that never reads.
    small = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
    async with (
        publisher(mongo_url, gateway) as pub,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30, transport=small) as stuck,
        stuck.stream("GET", "/events", headers={"x-api-key": key}) as never_read,
        sse(http, key) as reader,
    ):
        assert never_read.status_code == 200
        call = await pub.call()

        async def dropped() -> bool:
            now = await asyncio.to_thread(_metric, gateway, "event_streams_dropped_total")
            return now > dropped_before

        n = 0
        while not await dropped():  # ~4 KB each: the socket buffers fill within hundreds
            assert n < 3000, "the client that never reads was not dropped"
            for _ in range(20):
                await pub.publish(call.id, n, pad=4000)
                n += 1
        got = await reader.events_until(n, within_s=60)
        assert [e.id for e in got] == pub.sent
        assert "event stream dropped" in gateway.log_text()
        # The dropped client's connection was cut: reading what is left ends in an error.
        with pytest.raises(httpx.HTTPError):
            async with asyncio.timeout(30):
                async for _ in never_read.aiter_raw():
                    pass
        await pub.publish(call.id, n)
        await reader.events_until(n + 1)
        assert reader.ended is None


async def test_idle_streams_get_heartbeats(gateway: GatewayProcess) -> None:
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
        sse(http, gateway.api_key) as idle,
    ):
        await idle.until("two heartbeats", lambda: len(idle.comments) >= 2)
        assert set(idle.comments) == {": keep-alive"}


async def test_a_client_on_one_gateway_sees_events_stored_through_another(
    mongo_url: str, tmp_path: Path
) -> None:
    db = "events_" + uuid.uuid4().hex[:8]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {**ENV, "MONGODB_DB": db}
    with run_gateway(mongo_url, tmp_path / "a", env) as a:
        shared = {**env, "GATEWAY_API_KEY": a.api_key}
        with run_gateway(mongo_url, tmp_path / "b", shared) as b:
            key = a.api_key
            async with (
                publisher(mongo_url, a) as pub,
                httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a,
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b,
                sse(on_a, key) as client_a,
                sse(on_b, key) as client_b,
            ):
                call = await pub.call()
                for n in range(5):
                    await pub.publish(call.id, n)
                seen_a = await client_a.events_until(5)
                seen_b = await client_b.events_until(5)
                assert seen_a == seen_b and [e.id for e in seen_b] == pub.sent
            # B stops while a client watches: its stream ends cleanly, and B exits.
            async with (
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b,
                sse(on_b, key) as watching,
            ):
                await watching.until("the first heartbeat", lambda: bool(watching.comments))
                os.kill(b.pid, signal.SIGTERM)
                await watching.until("the stream to end", lambda: watching.ended is not None)
                assert watching.ended == "clean"

            def exited() -> bool:
                return "Application shutdown complete" in b.log_text()

            deadline = time.monotonic() + 90  # a loaded CI machine: generous
            while not exited():
                assert time.monotonic() < deadline, b.log_text()[-2000:]
                await asyncio.sleep(0.1)
            assert "timeout graceful shutdown exceeded" not in b.log_text()


def _stored_events(mongo_url: str, db: str) -> list[dict[str, object]]:
    """Every stored event (duplicates too) of the database's one organisation, by place."""
    client: MongoClient[dict[str, object]] = MongoClient(mongo_url)
    try:
        docs = list(client[db]["events"].find({}, {"seq": 1, "type": 1, "key": 1, "dup": 1}))
    finally:
        client.close()
    return sorted(docs, key=lambda doc: int(str(doc["seq"])))


async def test_a_call_served_by_one_gateway_is_watched_live_on_another_across_a_reconnect(
    mongo_url: str, tmp_path: Path
) -> None:
    """The call publisher's events (call.started, call.turn, ..., call.ended) of a call
    served by A reach a client on B as the call runs; the client leaves mid-call and,
    back with Last-Event-ID, gets everything after its last id once."""
    number = "+15550007101"
    env = {**ENV, "MONGODB_DB": "events_" + uuid.uuid4().hex[:8]}
    env["WEBHOOK_ALLOW_HOSTS"] = '["127.0.0.1"]'
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        run_webhook_receiver() as receiver,
        run_gateway(mongo_url, tmp_path / "a", env) as a,
    ):
        shared = {**env, "GATEWAY_API_KEY": a.api_key, "TWILIO_AUTH_TOKEN": a.auth_token}
        with run_gateway(mongo_url, tmp_path / "b", shared) as b:
            key = a.api_key
            async with (
                httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a,
                httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b,
            ):
                headers = {"x-api-key": key}
                claimed = await on_a.post("/numbers", json={"number": number}, headers=headers)
                assert claimed.status_code == 201, claimed.text
                body = {
                    "name": "Watched line",
                    "system_prompt": "You answer questions about the shop.",
                    "greeting": "Hello, you are on the watched line. How can I help?",
                    "webhook_url": receiver.url,
                    "phone_numbers": [number],
                }
                created = await on_a.post("/assistants", json=body, headers=headers)
                assert created.status_code == 201, created.text
                phone = SimulatedTwilioCall(
                    base_url=a.base_url,
                    public_url=a.base_url,
                    auth_token=a.auth_token,
                    to_number=number,
                )
                try:
                    async with sse(on_b, key) as first:
                        await phone.start(on_a)
                        await phone.wait_agent_audio(within_s=30)
                        await first.until(
                            "the greeting's turn, live",
                            lambda: any(e.event == "call.turn" for e in first.events),
                        )
                        before = list(first.events)
                    # Mid-call, nobody watching: the caller asks, the agent answers.
                    await phone.wait_agent_silent()
                    phone.say(espeak_mulaw("What are your opening hours?"))
                    await phone.wait_said()
                    await phone.wait_agent_audio(within_s=30)
                    await phone.wait_agent_silent()
                    await phone.stop()
                finally:
                    await phone.aclose()
                async with sse(on_b, key, headers={"Last-Event-ID": str(before[-1].id)}) as second:
                    await second.until(
                        "call.ended", lambda: any(e.event == "call.ended" for e in second.events)
                    )
                    after = list(second.events)
    seen = before + after
    # Each once, none missed: every readable event stored up to the last one seen, in order.
    # A place may hold an event marked a duplicate, never read out: its fact published by
    # both gateways at once (e.g. `call.ended` by the report rounds of A and B).
    stored = _stored_events(mongo_url, env["MONGODB_DB"])
    assert [int(str(doc["seq"])) for doc in stored] == list(range(1, len(stored) + 1))  # no gap
    readable = [
        int(str(doc["seq"]))
        for doc in stored
        if not doc.get("dup") and int(str(doc["seq"])) <= seen[-1].id
    ]
    assert [e.id for e in seen] == readable, [(d["seq"], d["type"], d.get("dup")) for d in stored]
    assert seen[0].event == "call.started"
    assert {json.loads(e.data)["call"]["id"] for e in seen} == {phone.call_id}
    turns = [json.loads(e.data)["turn"] for e in seen if e.event == "call.turn"]
    assert [t["index"] for t in turns] == list(range(len(turns)))
    assert {t["speaker"] for t in turns} == {"agent", "caller"}
    assert any(e.event == "call.turn" for e in after)  # said while the client was away
