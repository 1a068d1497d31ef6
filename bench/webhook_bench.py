"""End-call webhook benchmark: how fast reports leave, and what the leases cost.

An embedded FerretDB (the default store), one or two `WebhookOutbox` workers in this
process (two stand for two gateways on one database), and a receiver on loopback that
answers 200 and counts requests per delivery id. Calls are finished at a steady rate
while the workers run; for each report the bench takes the time from `finish_call` to
the receiver having it.

    python bench/webhook_bench.py [--calls 200] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import (
    AssistantConfig,
    CallStatus,
    Database,
    Direction,
    NewCall,
    open_database,
)
from tests.ferretdb_server import embedded_ferretdb
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard


class Receiver:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.count: Counter[str] = Counter()
        self.url = ""
        self.expected = 0
        self.delay_s = 0.0
        self.all_in = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
        )
        lower = {k.lower(): v for k, v in headers.items()}
        await reader.readexactly(int(lower.get("content-length", "0")))
        call_id = lower["x-webhook-id"].split("_")[1]
        await asyncio.sleep(self.delay_s)  # a CRM that takes its time to answer
        self.count[call_id] += 1
        self.at.setdefault(call_id, time.perf_counter())
        if len(self.at) >= self.expected:
            self.all_in.set()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


def new_outbox(database: Database) -> WebhookOutbox:
    return WebhookOutbox(
        webhooks=database.webhooks,
        calls=database.calls,
        assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]),
        policy=RetryPolicy(base_s=1, cap_s=5, max_attempts=5),
        poll_s=0.1,
    )


async def run(
    database: Database, *, calls: int, rate: float, workers: int, delay_ms: float
) -> None:
    receiver = Receiver()
    receiver.expected = calls
    receiver.delay_s = delay_ms / 1000
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    org = await database.accounts.ensure_organization("bench-" + uuid.uuid4().hex[:6])
    assistant = await database.assistants.create(
        org.id, AssistantConfig(name="bench", system_prompt="Help.", webhook_url=receiver.url)
    )
    outboxes = [new_outbox(database) for _ in range(workers)]
    tasks = [asyncio.create_task(o.run()) for o in outboxes]
    finished_at: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(calls):
        call = await database.calls.create_call(
            NewCall(
                org_id=org.id, transport="twilio", call_sid=f"CA{i:032d}",
                from_number="+15550001111", to_number="+15550002222",
                direction=Direction.INBOUND, assistant_id=assistant.id,
            ),
            started_at=datetime.now(UTC),
        )  # fmt: skip
        await database.calls.add_turn(call.id, speaker="agent", text="Hi", start_ms=0, end_ms=500)
        await database.calls.finish_call(
            call.id, status=CallStatus.COMPLETED, end_reason="bench", ended_at=datetime.now(UTC)
        )
        finished_at[call.id] = time.perf_counter()
        for outbox in outboxes:
            outbox.poke()  # what the stream driver does when its call ends
        await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
    try:
        await asyncio.wait_for(receiver.all_in.wait(), 120)
    except TimeoutError:
        pass  # reported as fewer reports received
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for outbox in outboxes:
        await outbox.aclose()
    server.close()
    await server.wait_closed()
    latencies = sorted((receiver.at[c] - finished_at[c]) * 1000 for c in receiver.at)
    duplicates = sum(n - 1 for n in receiver.count.values())
    p95 = latencies[max(0, int(0.95 * len(latencies)) - 1)] if latencies else float("nan")
    print(
        f"| {workers} | {delay_ms:g} | {calls} at {rate:g}/s | {len(receiver.at)} | "
        f"{statistics.median(latencies):.0f} / {p95:.0f} | {duplicates} | {elapsed:.1f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as server:
        print("| gateways | receiver answers after ms | calls finished | reports received "
              "| finish → received ms p50 / p95 | duplicates | s |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for workers, delay_ms in ((1, 0), (2, 0), (1, 500)):
            database = await open_database(server.url, "bench_" + uuid.uuid4().hex[:8])
            try:
                await run(
                    database, calls=args.calls, rate=args.rate, workers=workers, delay_ms=delay_ms
                )
            finally:
                await database.close()


if __name__ == "__main__":
    asyncio.run(main())
