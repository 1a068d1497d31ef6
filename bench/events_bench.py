"""Call-event webhook benchmark: from an event stored to a receiver having it.

An embedded FerretDB, one `WebhookOutbox` with the gateway's `CallEvents` publisher in this
process, and a receiver on loopback answering 200. `--calls` live calls (default 50) each
store a transcript turn and publish its `call.turn` every `--turn-s` seconds (staggered),
one after another per call, as a call's write queue does; live calls' audio is not run
(2 cores would measure the speech fakes, not the events). The assistant subscribes to
`call.turn`, so every event becomes a delivery, sent one at a time per call, in order.
Figures: event stored (`on_published`) -> received, p50 / p95 / p99.

    python bench/events_bench.py [--calls 50] [--turns 10] [--turn-s 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import AssistantConfig, Database, Direction, EventRecord, NewCall, open_database
from tests.ferretdb_server import embedded_ferretdb
from webhooks.call_events import CallEvents
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard


class Receiver:
    def __init__(self, expected: int) -> None:
        self.at: dict[str, float] = {}
        self.count: Counter[str] = Counter()
        self.order_ok = True
        self._last: dict[str, int] = {}
        self.expected = expected
        self.all_in = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines if line)}
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        now = time.perf_counter()
        self.count[body["id"]] += 1
        self.at.setdefault(body["id"], now)
        call, index = body["call"]["id"], body["turn"]["index"]
        if index <= self._last.get(call, -1):
            self.order_ok = False
        self._last[call] = index
        if len(self.at) >= self.expected:
            self.all_in.set()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


async def run(database: Database, *, calls: int, turns: int, turn_s: float) -> None:
    receiver = Receiver(calls * turns)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    org = await database.accounts.ensure_organization("bench-" + uuid.uuid4().hex[:6])
    assistant = await database.assistants.create(
        org.id,
        AssistantConfig(
            name="bench", system_prompt="Help.", webhook_url=url, webhook_events=["call.turn"]
        ),
    )
    stored_at: dict[str, float] = {}

    def on_published(event: EventRecord) -> None:
        stored_at[f"dlv_{event.key}"] = time.perf_counter()

    outbox: WebhookOutbox | None = None

    def wake() -> None:
        if outbox is not None:
            outbox.wake()

    events = CallEvents(
        events=database.events, webhooks=database.webhooks, assistants=database.assistants,
        on_published=on_published, on_queued=wake,
    )  # fmt: skip
    outbox = WebhookOutbox(
        webhooks=database.webhooks, calls=database.calls, assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]), policy=RetryPolicy(base_s=1, cap_s=5, max_attempts=5),
        poll_s=0.5, concurrency=8, events=events,
    )  # fmt: skip
    worker = asyncio.create_task(outbox.run())

    async def one_call(i: int) -> None:
        call = await database.calls.create_call(
            NewCall(
                org_id=org.id, transport="twilio", call_sid=f"CA{i:032d}",
                from_number="+15550001111", to_number="+15550002222",
                direction=Direction.INBOUND, assistant_id=assistant.id,
            ),
            started_at=datetime.now(UTC),
        )  # fmt: skip
        await asyncio.sleep(turn_s * i / calls)  # staggered, as live calls are
        begun = time.perf_counter()
        for n in range(turns):
            turn = await database.calls.add_turn(
                call.id, speaker="agent" if n % 2 == 0 else "caller",
                text=f"turn {n} of call {i}", start_ms=n * 1000, end_ms=n * 1000 + 800,
            )  # fmt: skip
            await events.turn(call, turn)
            await asyncio.sleep(max(0.0, begun + (n + 1) * turn_s - time.perf_counter()))

    started = time.perf_counter()
    await asyncio.gather(*(one_call(i) for i in range(calls)))
    try:
        await asyncio.wait_for(receiver.all_in.wait(), 120)
    except TimeoutError:
        pass  # reported as fewer received
    elapsed = time.perf_counter() - started
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await outbox.aclose()
    server.close()
    await server.wait_closed()
    latencies = sorted((receiver.at[k] - stored_at[k]) * 1000 for k in receiver.at)
    duplicates = sum(n - 1 for n in receiver.count.values())
    print(
        f"| {calls} | {calls * turns} at {calls / turn_s:g}/s | {len(receiver.at)} | "
        f"{statistics.median(latencies):.0f} / {_pct(latencies, 0.95):.0f} / "
        f"{_pct(latencies, 0.99):.0f} | {duplicates} | {receiver.order_ok} | {elapsed:.1f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--turn-s", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as server:
        print("| live calls | call.turn events | received | stored → received ms p50 / p95 / p99 "
              "| duplicates | in order per call | s |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        database = await open_database(server.url, "bench_" + uuid.uuid4().hex[:8])
        try:
            await run(database, calls=args.calls, turns=args.turns, turn_s=args.turn_s)
        finally:
            await database.close()


if __name__ == "__main__":
    asyncio.run(main())
