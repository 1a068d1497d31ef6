"""The campaign dialer on a 10 000-contact campaign: database operations per attempt,
scheduling overhead (CPU per round and per attempt), and the achieved dial rate against
the configured one.

Starts an embedded FerretDB (or uses `--mongodb-url`, any server speaking MongoDB's wire
protocol), makes one organisation, assistant and campaign with `--contacts` contacts (one
upload), and runs the real `CampaignDialer` over the real repositories (campaigns, calls,
do-not-call, heartbeats, the organisation's cap, campaign events) with an in-process fake
carrier: a placed call is stored as the API stores it (`create_call`, then its carrier
id), and finished `--call-s` later as `completed`. Every database command is counted by a
PyMongo command listener, attributed to the dialer (its rounds and placing tasks) or to the
fake carrier (what Twilio's callbacks would cost anyway: not the dialer's).

Figures: the new leader's load of every contact (ms, commands), then for `--seconds`: per
round wall and CPU ms (median, p95), commands per attempt (by command name), CPU ms per
attempt, and attempts per second achieved vs `--cps` (after the first attempt).

    python bench/dialer_bench.py [--contacts 10000] [--cps 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from pymongo import monitoring

from gateway.call.capacity import OrganizationCapacity
from gateway.campaigns.clock import SystemClock
from gateway.campaigns.dialer import CampaignDialer, DialerConfig
from storage import (
    AssistantConfig,
    CallStatus,
    CampaignRecord,
    CampaignSpec,
    ContactInput,
    ContactRecord,
    Direction,
    NewCall,
    Schedule,
    open_database,
)
from storage.database import Database
from tests.ferretdb_server import embedded_ferretdb
from webhooks.campaign_events import CampaignEvents

_who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="other")


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("hello", "isMaster", "ismaster", "ping", "endSessions"):
            return
        collection = event.command.get(event.command_name)
        where = f"{event.command_name} {collection}" if isinstance(collection, str) else ""
        self.counts[(_who.get(), where or event.command_name)] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def total(self, who: str) -> int:
        return sum(n for (w, _), n in self.counts.items() if w == who)

    def by_name(self, who: str) -> dict[str, int]:
        return {name: n for (w, name), n in sorted(self.counts.items()) if w == who}


class FakeCarrier:
    """Stores each call as POST /call/outbound does, and finishes it `call_s` later."""

    def __init__(self, db: Database, call_s: float) -> None:
        self._db = db
        self._call_s = call_s
        self._tasks: set[asyncio.Task[None]] = set()
        self.placed_at: list[float] = []

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        *,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None:
        self.placed_at.append(time.perf_counter())
        call = await self._db.calls.create_call(
            NewCall(
                org_id=campaign.org_id,
                transport="twilio",
                call_sid="",
                from_number=campaign.from_number or "",
                to_number=contact.to_number,
                direction=Direction.OUTBOUND,
                assistant_id=campaign.assistant_id,
                metadata=contact.metadata,
                status=CallStatus.QUEUED,
            ),
            started_at=datetime.now(UTC),
        )
        await on_stored(call.id)
        await self._db.calls.set_call_sid(call.id, "CA" + call.id)
        task = asyncio.create_task(self._finish(call.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, call_id: str) -> None:
        _who.set("carrier")
        await asyncio.sleep(self._call_s)
        await self._db.calls.set_status(call_id, CallStatus.IN_PROGRESS)
        await self._db.calls.finish_call(
            call_id, status=CallStatus.COMPLETED, end_reason="callee", ended_at=datetime.now(UTC)
        )

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run(url: str, args: argparse.Namespace, counter: CommandCounter) -> None:
    db = await open_database(url, "dialer_bench_" + str(int(time.time())))
    try:
        org = (await db.accounts.ensure_organization("bench")).id
        assistant = await db.assistants.create(
            org,
            AssistantConfig(name="bench", system_prompt="Remind {{name}}.", greeting="Hi"),
        )
        campaign = await db.campaigns.create(
            org,
            CampaignSpec(
                name="bench",
                assistant_id=assistant.id,
                call_service="twilio",
                schedule=Schedule(time_zone="UTC"),
                from_number="+15550000000",
                max_concurrency=args.concurrency,
                calls_per_second=args.cps,
            ),
        )
        rows = [
            ContactInput(to_number=f"+1555{i:07d}", metadata={"name": f"Person {i}"})
            for i in range(args.contacts)
        ]
        started = time.perf_counter()
        await db.campaigns.add_contacts(campaign.id, rows)
        upload_s = time.perf_counter() - started

        carrier = FakeCarrier(db, args.call_s)
        dialer = CampaignDialer(
            config=DialerConfig(gateway_id="gw-bench", lease_s=30, tick_s=args.tick_s),
            campaigns=db.campaigns,
            do_not_call=db.do_not_call,
            calls=db.calls,
            heartbeats=db.leases,
            capacity=OrganizationCapacity(accounts=db.accounts, calls=db.calls, retry_after_s=5),
            placer=carrier,
            events=CampaignEvents(events=db.events, webhooks=db.webhooks, assistants=db.assistants),
            clock=SystemClock(),
        )
        _who.set("dialer")
        # The first round takes the lead and loads every contact.
        before = counter.total("dialer")
        t0, c0 = time.perf_counter(), time.process_time()
        await dialer.tick()
        load_ms = (time.perf_counter() - t0) * 1000
        load_cpu_ms = (time.process_time() - c0) * 1000
        load_ops = counter.total("dialer") - before
        counter.counts.clear()

        walls: list[float] = []
        cpus: list[float] = []
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t, c = time.perf_counter(), time.process_time()
            await dialer.tick()
            walls.append((time.perf_counter() - t) * 1000)
            cpus.append((time.process_time() - c) * 1000)
            await asyncio.sleep(max(0.0, args.tick_s - (time.perf_counter() - t)))
        await dialer.aclose()
        attempts = len(carrier.placed_at)
        await carrier.aclose()
        counts = await db.campaigns.counts(campaign.id)
    finally:
        await db.close()

    span = carrier.placed_at[-1] - carrier.placed_at[0] if attempts > 1 else float("nan")
    achieved = (attempts - 1) / span if attempts > 1 else 0.0
    dialer_ops = counter.total("dialer")
    print(f"store: {url.split('@')[-1]}  contacts: {args.contacts}  upload: {upload_s:.2f} s")
    print(f"leader's load of every contact: {load_ms:.0f} ms wall, {load_cpu_ms:.0f} ms CPU, "
          f"{load_ops} commands")  # fmt: skip
    print(
        f"rounds: {len(walls)} every {args.tick_s} s; per round wall ms p50 "
        f"{statistics.median(walls):.1f} p95 {_pct(walls, 0.95):.1f}; CPU ms p50 "
        f"{statistics.median(cpus):.1f} p95 {_pct(cpus, 0.95):.1f}"
    )
    print(
        f"attempts: {attempts} in {args.seconds:.0f} s; contacts now {counts.by_status}; "
        f"CPU per attempt (rounds' CPU / attempts): {sum(cpus) / max(1, attempts):.2f} ms"
    )
    print(
        f"dial rate: configured {args.cps:g}/s, achieved {achieved:.2f}/s "
        f"({achieved / args.cps:.1%})"
    )
    per = dialer_ops / max(1, attempts)
    print(f"dialer commands per attempt: {per:.1f} (all rounds' and placing's commands / attempts)")
    for name, n in counter.by_name("dialer").items():
        print(f"  {name:>32}: {n / max(1, attempts):6.2f} per attempt")
    carrier_ops = counter.total("carrier") / max(1, attempts)
    print(
        f"fake carrier's commands per call (answer + finish; not the dialer's): {carrier_ops:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--cps", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--call-s", type=float, default=2.0)
    parser.add_argument("--tick-s", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--mongodb-url", default=None)
    args = parser.parse_args()
    counter = CommandCounter()
    monitoring.register(counter)  # before any client is made: every client reports
    with ExitStack() as stack:
        url = args.mongodb_url
        if url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            url = stack.enter_context(embedded_ferretdb(Path(tmp))).url
        asyncio.run(_run(url, args, counter))


if __name__ == "__main__":
    main()
