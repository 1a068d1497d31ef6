"""Live events benchmark: what an SSE poll costs on the embedded store, and how long an
event takes from being published to reaching an SSE client.

(a) Poll cost on an embedded FerretDB: the time of one idle poll (`read_after` at the head,
finding nothing) and of reading 100 new events, with 1 000 and then 100 000 events stored
in the collection (spread over 10 organisations: the others' events count too), filled
with insert_many. For contrast, the same "after the head" read as a MongoDB range query
(`{org_id, seq: {$gt: head}}`), which FerretDB 1.24 answers by scanning in Go, and
FerretDB's plan of an `_id` lookup: `SEARCH` with the `_id` index on the build
scripts/ensure-ferretdb.sh makes (r3); `SCAN` on FerretDB 1.24 as released (r2 here, e.g.
`FERRETDB_BIN=~/.cache/voice-gateway/ferretdb-v1.24.2-r2/ferretdb`), where a lookup that
finds nothing reads every row.

(b) Published -> received by an SSE client on `GET /events`, at the rate of `--calls` live
calls each publishing a call.turn every 2-3 s for `--seconds`: from another process (the
gateway runs as its own process and finds the events by polling, EVENT_POLL_S=0.25), and
from the gateway's own process (in-process uvicorn; the publisher hands each stored event
to `EventFeed.published`, as the call publisher does).

    python bench/sse_bench.py [--calls 50] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn
from pydantic import SecretStr
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.app import create_app, end_event_streams  # noqa: E402
from gateway.server import GatewayServer  # noqa: E402
from gateway.services import Services  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from storage import EventRecord, EventRepository, open_database  # noqa: E402
from tests.ferretdb_server import embedded_ferretdb  # noqa: E402

ORGS = 10
Publish = Callable[[str, str, int, str], Awaitable[object]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ms(values: list[float]) -> str:
    values = sorted(values)

    def p(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return (
        f"p50 {statistics.median(values) * 1000:7.2f} ms  p95 {p(0.95) * 1000:7.2f} ms  "
        f"p99 {p(0.99) * 1000:7.2f} ms  (n={len(values)})"
    )


# ------------------------------------------------------------------ (a) poll cost


async def _fill(url: str, db: str, start: int, stop: int) -> None:
    """Events `start`..`stop` (over all organisations) as publish stores them."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        events = client[db]["events"]
        batch = []
        for i in range(start, stop):
            org, seq = f"org{i % ORGS}", i // ORGS + 1
            batch.append(
                {
                    "_id": f"{org}:{seq}",
                    "seq": seq,
                    "org_id": org,
                    "call_id": f"call{i % 500}",
                    "type": "call.turn",
                    "key": f"k{i}",
                    "at": datetime.now(UTC),
                    "body": json.dumps({"n": i, "text": "x" * 200}),
                }
            )
            if len(batch) == 5000:
                await events.insert_many(batch, ordered=False)
                batch = []
        if batch:
            await events.insert_many(batch, ordered=False)
    finally:
        await client.close()


async def _timed(n: int, work: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await work()
        out.append(time.perf_counter() - t0)
    return out


async def _measure(url: str, db: str, total: int) -> None:
    repo = EventRepository()
    org = "org3"
    head = await repo.head(org)
    small = total <= 10_000  # at 100 000 a lookup takes ~1 s on FerretDB/SQLite: fewer
    idle = await _timed(200 if small else 20, lambda: repo.read_after(org, head))
    hundred = await _timed(30 if small else 3, lambda: repo.read_after(org, head - 100, limit=100))
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
    try:
        coll = client[db]["events"]

        async def by_range() -> object:
            return await coll.find({"org_id": org, "seq": {"$gt": head}}).to_list()

        scans = await _timed(5 if small else 3, by_range)
        plan = await client[db].command(
            "explain", {"find": "events", "filter": {"_id": f"{org}:{head + 1}"}}
        )
    finally:
        await client.close()
    print(f"{total:>7} events stored ({total // ORGS} in the polled organisation):")
    print(f"  idle poll (read_after at the head, 1 _id lookup)  {_ms(idle)}")
    print(f"  read 100 new events (101 _id lookups)             {_ms(hundred)}")
    print(f"  contrast: range query {{org_id, seq > head}}        {_ms(scans)}")
    print(f"  FerretDB's plan of an _id lookup: {plan['queryPlanner']['Plan']}", flush=True)


async def poll_cost(url: str) -> None:
    db = "sse_poll_" + uuid.uuid4().hex[:8]
    database = await open_database(url, db)
    try:
        filled = 0
        for total in (1_000, 100_000):
            await _fill(url, db, filled, total)
            filled = total
            await _measure(url, db, total)
    finally:
        await database.close()


# ------------------------------------------------------------------ (b) latency


class Watcher:
    """An SSE client that notes when each event arrived, by the `t` its body carries."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.count = 0
        self.expected: int | None = None
        self.all_in = asyncio.Event()

    async def run(self, base: str, key: str, ready: asyncio.Event) -> None:
        async with (
            httpx.AsyncClient(base_url=base, timeout=None) as http,
            http.stream("GET", "/events", headers={"x-api-key": key}) as response,
        ):
            assert response.status_code == 200, response.status_code
            ready.set()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    sent = json.loads(line[6:])["t"]
                    self.latencies.append(time.time() - sent)
                    self.count += 1
                    if self.expected is not None and self.count >= self.expected:
                        self.all_in.set()


async def _load(publish: Publish, *, calls: int, seconds: float) -> int:
    """`calls` publishers, each a call.turn every 2-3 s for `seconds`."""
    done = 0

    async def one_call(i: int) -> None:
        nonlocal done
        call_id = f"call{i}_{uuid.uuid4().hex[:6]}"
        await asyncio.sleep(random.uniform(0, 2.5))
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            body = json.dumps({"call_id": call_id, "turn": n, "t": time.time()})
            await publish(call_id, f"{call_id}_call_turn_{n}", n, body)
            done += 1
            n += 1
            await asyncio.sleep(random.uniform(2.0, 3.0))

    await asyncio.gather(*(one_call(i) for i in range(calls)))
    return done


async def _watch_while(
    base: str, key: str, load: Callable[[], Awaitable[int]]
) -> tuple[Watcher, int]:
    watcher = Watcher()
    ready = asyncio.Event()
    task = asyncio.create_task(watcher.run(base, key, ready))
    await asyncio.wait_for(ready.wait(), 30)
    sent = await load()
    watcher.expected = sent
    if watcher.count < sent:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watcher.all_in.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return watcher, sent


def _report(label: str, watcher: Watcher, sent: int) -> None:
    print(f"{label}: {watcher.count}/{sent} received  {_ms(watcher.latencies)}")


def start_gateway(url: str, db: str, key: str) -> tuple[subprocess.Popen[bytes], str]:
    """`voice-gateway serve` as its own process (EVENT_POLL_S at its default)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MONGODB_URL": url,
        "MONGODB_DB": db,
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": "bench-token",
        "GATEWAY_API_KEY": key,
        "LOG_LEVEL": "WARNING",
        "STT_PREWARM": "0",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return gateway, base
        assert time.monotonic() < deadline and gateway.poll() is None, "no gateway"
        time.sleep(0.2)


async def from_another_process(
    url: str, db: str, base: str, key: str, *, calls: int, seconds: float
) -> None:
    database = await open_database(url, db)
    try:
        found = await database.accounts.find_active_key(key)
        assert found is not None
        org = found.org_id

        async def publish(call_id: str, event_key: str, n: int, body: str) -> object:
            return await database.events.publish(
                key=event_key, org_id=org, call_id=call_id, type="call.turn",
                body=body, at=datetime.now(UTC),
            )  # fmt: skip

        watcher, sent = await _watch_while(
            base, key, lambda: _load(publish, calls=calls, seconds=seconds)
        )
    finally:
        await database.close()
    _report("from another process (polled, EVENT_POLL_S=0.25)", watcher, sent)


@contextlib.asynccontextmanager
async def _in_process_gateway(url: str) -> AsyncIterator[tuple[str, str, Services]]:
    port = _free_port()
    key = "vg_" + secrets.token_urlsafe(32)
    settings = Settings(
        mongodb_url=url,
        mongodb_db="sse_same_" + uuid.uuid4().hex[:8],
        public_url=f"http://127.0.0.1:{port}",
        twilio_auth_token=SecretStr("bench-token"),
        gateway_api_key=SecretStr(key),
        stt_prewarm=0,
        log_level="WARNING",
    )

    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = GatewayServer(config, before_shutdown=lambda: end_event_streams(app))
    task = asyncio.create_task(server.serve())
    async with httpx.AsyncClient(timeout=2) as probe:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if (await probe.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    break
            await asyncio.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", key, app.state.services
    finally:
        server.should_exit = True
        await task


async def from_the_same_process(url: str, *, calls: int, seconds: float) -> None:
    async with _in_process_gateway(url) as (base, key, services):
        found = await services.database.accounts.find_active_key(key)
        assert found is not None
        org = found.org_id

        async def publish(call_id: str, event_key: str, n: int, body: str) -> EventRecord:
            record = await services.database.events.publish(
                key=event_key, org_id=org, call_id=call_id, type="call.turn",
                body=body, at=datetime.now(UTC),
            )  # fmt: skip
            services.event_feed.published(record)  # what the call publisher's on_published does
            return record

        watcher, sent = await _watch_while(
            base, key, lambda: _load(publish, calls=calls, seconds=seconds)
        )
    _report("from the gateway's own process (published() wakes)", watcher, sent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip-poll", action="store_true")
    parser.add_argument("--skip-stream", action="store_true", help="(a) only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as ferret:
        if not args.skip_poll:
            print("(a) SSE poll cost on the embedded FerretDB", flush=True)
            asyncio.run(poll_cost(ferret.url))
        if args.skip_stream:
            return 0
        print(
            f"(b) published -> SSE client, {args.calls} calls each sending a call.turn "
            f"every 2-3 s for {args.seconds:.0f} s",
            flush=True,
        )
        db, key = "sse_lat_" + uuid.uuid4().hex[:8], "vg_" + secrets.token_urlsafe(32)
        gateway, base = start_gateway(ferret.url, db, key)
        try:
            asyncio.run(
                from_another_process(
                    ferret.url, db, base, key, calls=args.calls, seconds=args.seconds
                )
            )
        finally:
            gateway.terminate()
            gateway.wait(timeout=20)
        asyncio.run(from_the_same_process(ferret.url, calls=args.calls, seconds=args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
