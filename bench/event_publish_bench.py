"""Publishing events from many calls of one organisation at once, in one process.

An embedded FerretDB and one `EventRepository`: `--calls` publishers (a talking call's
write queue each) publish a `call.turn` event at the same moment, `--rounds` times.
Figures: database commands per event (the inserts of a place, including those that found
it taken, and the head lookups that follow), wall time per round p50 / p95, and CPU per
event of this process. Run it against another tree to compare:

    python bench/event_publish_bench.py [--calls 32] [--rounds 20] [--tree PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    """Counts the commands sent, by name and collection."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.failed_inserts = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("hello", "isMaster", "ismaster", "ping", "endSessions"):
            return
        collection = event.command.get(event.command_name)
        self.counts[f"{event.command_name} {collection}"] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        reply = event.reply
        if event.command_name == "insert" and reply.get("writeErrors"):
            self.failed_inserts += 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def _run(url: str, calls: int, rounds: int, counter: CommandCounter) -> None:
    storage = importlib.import_module("storage")
    db = await storage.open_database(url, "bench_events")
    repo = db.events
    try:
        await repo.publish(  # the head is found once, before the measured rounds
            key="warm",
            org_id="org",
            call_id="c0",
            type="call.turn",
            body="{}",
            at=datetime.now(UTC),
        )
        counter.counts.clear()
        counter.failed_inserts = 0
        walls: list[float] = []
        cpu0 = time.process_time()
        for r in range(rounds):
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    repo.publish(
                        key=f"c{i}_call_turn_{r}",
                        org_id="org",
                        call_id=f"c{i}",
                        type="call.turn",
                        body='{"turn": "hello"}',
                        at=datetime.now(UTC),
                    )
                    for i in range(calls)
                )
            )
            walls.append((time.perf_counter() - start) * 1000)
        cpu_ms = (time.process_time() - cpu0) * 1000
        events = calls * rounds
        walls.sort()
        print(
            f"| {calls} | {events} | {sum(counter.counts.values()) / events:.1f} | "
            f"{counter.failed_inserts / events:.2f} | {statistics.median(walls):.0f} / "
            f"{walls[int(0.95 * (len(walls) - 1))]:.0f} | {cpu_ms / events:.2f} |"
        )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from tests.ferretdb_server import embedded_ferretdb

    counter = CommandCounter()
    monitoring.register(counter)
    print("| calls at once | events | commands per event | places found taken per event "
          "| round ms p50 / p95 | CPU ms per event |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as server:
        asyncio.run(_run(server.url, args.calls, args.rounds, counter))


if __name__ == "__main__":
    main()
