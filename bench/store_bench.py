"""The embedded store with a long history: what each operation on a call's path costs, and
the calls list, at 100, 10 000 and 100 000 stored calls of one organisation.

Starts an embedded FerretDB (or uses `--mongodb-url`); for each size, a fresh database is
seeded by bulk insert, past the repository (finished calls, two turns each, their keys
in `storage.call_index`), then these are timed through the storage API, one at a time:

- stream start: `create_call` + `set_stream`,
- status callback: `get_call_by_sid` + `set_status` (what Twilio's callback route does),
- turn insert: `add_turn` (three per call, the first one seeds the call's position), as
  the gateway stores a turn (its id, the first attempt); and one tried again with the
  same id (its answer lost), which reads the stored turn first,
- finish: `finish_call`,
- lease renewal: a gateway's heartbeat (`HeartbeatWriter.beat`),
- outbox claim: `claim_many` with one delivery queued,
- `list_calls` (50): the first page, filtered by status (`no-answer`: 1 call in 10), and
  a page at 90 % of the history by cursor.

    python bench/store_bench.py [--sizes 100,10000,100000] [--reps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId

from storage import CallFilter, CallStatus, Direction, NewCall, new_turn_id, open_database
from storage.documents import CallDocument, TurnDocument
from storage.leases import HeartbeatWriter
from tests.ferretdb_server import embedded_ferretdb

try:  # absent before the keys existed (to time the code before them)
    from storage.call_index import CALL_INDEX, CALL_SIDS, TURN_SLOTS, index_entries

    KEYED = True
except ImportError:  # pragma: no cover
    KEYED = False

BASE = datetime(2025, 1, 1, tzinfo=UTC)
STATUSES = ["completed"] * 8 + ["no-answer", "busy"]


async def _seed(url: str, db: str, calls: int) -> tuple[str, str, str]:
    """One organisation with `calls` finished calls; (org id, assistant id, deep cursor)."""
    database = await open_database(url, db)
    try:
        org = (await database.accounts.ensure_organization("acme")).id
        assistant = "asst-bench"
        collection = CallDocument.get_pymongo_collection()
        rows: list[dict[str, Any]] = []
        for i in range(calls):
            started = BASE + timedelta(seconds=37 * i)
            rows.append(
                {
                    "_id": ObjectId(),
                    "org_id": org,
                    "transport": "twilio",
                    "call_sid": f"CAseed{i}",
                    "stream_sid": f"MZseed{i}",
                    "from_number": "+15550001111",
                    "to_number": "+15550002222",
                    "direction": "inbound" if i % 3 else "outbound",
                    "assistant_id": assistant,
                    "metadata": {"customer": f"c-{i}"},
                    "status": STATUSES[i % len(STATUSES)],
                    "started_at": started,
                    "answered_at": started + timedelta(seconds=2),
                    "ended_at": started + timedelta(seconds=65),
                    "duration_s": 65.0,
                    "end_reason": "caller-hung-up",
                    "report_pending": False,
                    "analysis_pending": False,
                    "analysis_gen": 0,
                }
            )
        entries: list[dict[str, Any]] = []
        if KEYED:
            entries = index_entries(
                [
                    (org, str(r["_id"]), r["started_at"], assistant, r["direction"], r["status"])
                    for r in rows
                ]
            )
            for row, entry in zip(rows, entries, strict=True):  # sorted as seeded
                row["index_key"] = entry["_id"]
        turns: list[dict[str, Any]] = []
        slots: list[dict[str, Any]] = []
        for row in rows:
            for index, speaker in enumerate(("agent", "caller")):
                turn_id = ObjectId()
                turns.append(
                    {
                        "_id": turn_id,
                        "call_id": str(row["_id"]),
                        "index": index,
                        "speaker": speaker,
                        "text": "Hello, how can I help?" if index == 0 else "Opening hours.",
                        "start_ms": 1000.0 * index,
                        "end_ms": 1000.0 * index + 800,
                        "interrupted": False,
                        "created_at": row["started_at"],
                    }
                )
                slots.append({"_id": f"{row['_id']}:{index}", "turn_id": str(turn_id)})
        db_ = collection.database
        batches: list[tuple[Any, list[dict[str, Any]]]] = [
            (collection, rows),
            (TurnDocument.get_pymongo_collection(), turns),
        ]
        if KEYED:
            sids = [{"_id": r["call_sid"], "call_id": str(r["_id"]), "t": 0} for r in rows]
            batches += [
                (db_[CALL_INDEX], entries),
                (db_[TURN_SLOTS], slots),
                (db_[CALL_SIDS], sids),
            ]
        for target, docs in batches:
            for start in range(0, len(docs), 2000):
                await target.insert_many(docs[start : start + 2000], ordered=False)
        deep = rows[calls // 10]  # 90 % of the history is newer
        raw = json.dumps([deep["started_at"].isoformat(), str(deep["_id"])]).encode()
        return org, assistant, base64.urlsafe_b64encode(raw).decode().rstrip("=")
    finally:
        await database.close()


async def _timed(samples: list[float], step: Callable[[], Awaitable[object]]) -> Any:
    t0 = time.perf_counter()
    out = await step()
    samples.append((time.perf_counter() - t0) * 1000)
    return out


async def _measure(url: str, db: str, size: int, reps: int) -> dict[str, list[float]]:
    org, assistant, deep_cursor = await _seed(url, db, size)
    database = await open_database(url, db)
    beat = HeartbeatWriter(url, db, "gw-bench")
    out: dict[str, list[float]] = {}

    def series(name: str) -> list[float]:
        return out.setdefault(name, [])

    try:
        store = database.calls
        now = datetime.now(UTC)
        for r in range(reps):
            sid = f"CAbench{uuid.uuid4().hex}"
            new = NewCall(
                org_id=org,
                transport="twilio",
                call_sid=sid,
                from_number="+15550001111",
                to_number="+15550002222",
                direction=Direction.INBOUND,
                assistant_id=assistant,
            )

            async def start(new: NewCall = new, r: int = r) -> str:
                call = await store.create_call(new, started_at=now + timedelta(milliseconds=r))
                await store.set_stream(call.id, f"MZ{r}")
                return call.id

            call_id = await _timed(series("stream start (create + set_stream)"), start)

            async def callback(sid: str = sid) -> None:
                call = await store.get_call_by_sid(sid)
                assert call is not None
                await store.set_status(call.id, CallStatus.IN_PROGRESS)

            await _timed(series("status callback (by sid + set_status)"), callback)
            turn = functools.partial(
                store.add_turn, call_id, speaker="agent", text="Hi", start_ms=0, end_ms=500
            )
            turn_ids = [new_turn_id() for _ in range(3)]
            for turn_id in turn_ids:  # as the gateway stores one: its id, the first attempt
                await _timed(
                    series("turn insert (add_turn)"),
                    functools.partial(turn, turn_id=turn_id, first_attempt=True),
                )
            await _timed(  # a write whose answer was lost, tried again: stored once
                series("turn insert tried again (add_turn, its id sent before)"),
                functools.partial(turn, turn_id=turn_ids[-1]),
            )
            await _timed(
                series("finish (finish_call)"),
                functools.partial(
                    store.finish_call,
                    call_id,
                    status=CallStatus.COMPLETED,
                    end_reason="bench",
                    ended_at=now + timedelta(seconds=30),
                ),
            )
            await _timed(
                series("lease renewal (heartbeat)"),
                lambda: asyncio.to_thread(beat.beat, at=datetime.now(UTC), lease_s=15.0),
            )
            await database.webhooks.enqueue(
                delivery_id=f"dl-{uuid.uuid4().hex}",
                org_id=org,
                call_id=call_id,
                event="call.ended",
                url="http://127.0.0.1:9/hook",
                body="{}",
                now=datetime.now(UTC) - timedelta(seconds=1),
            )
            await _timed(
                series("outbox claim (claim_many)"),
                lambda: database.webhooks.claim_many(
                    owner="gw-bench", now=datetime.now(UTC), lease_s=30.0, limit=10
                ),
            )
        pages = {
            "list_calls first page": (CallFilter(org_id=org), None),
            "list_calls status=no-answer": (
                CallFilter(org_id=org, status=CallStatus.NO_ANSWER),
                None,
            ),
            "list_calls deep cursor (90 %)": (CallFilter(org_id=org), deep_cursor),
        }
        for name, (where, cursor) in pages.items():
            for _ in range(reps):
                page = await _timed(
                    series(name),
                    functools.partial(store.list_calls, where, limit=50, cursor=cursor),
                )
                assert page.items, name
    finally:
        beat.close()
        await database.close()
    return out


def _row(name: str, size: int, samples: list[float]) -> str:
    p95 = statistics.quantiles(samples, n=20)[18] if len(samples) > 1 else samples[0]
    return f"| {name} | {size} | {statistics.median(samples):.2f} | {p95:.2f} | {len(samples)} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--mongodb-url", default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with ExitStack() as stack:
        url = args.mongodb_url
        if url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            url = stack.enter_context(embedded_ferretdb(Path(tmp))).url
        rows = []
        for size in sizes:
            t0 = time.perf_counter()
            figures = asyncio.run(_measure(url, f"bench_{uuid.uuid4().hex[:8]}", size, args.reps))
            print(f"# {size} calls: seeded and measured in {time.perf_counter() - t0:.0f} s")
            rows += [_row(name, size, samples) for name, samples in figures.items()]
    print("| operation | stored calls | p50 ms | p95 ms | n |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
