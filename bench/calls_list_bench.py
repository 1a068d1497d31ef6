"""The calls list on a long history: `list_calls` pages (what `GET /calls` reads) at a few
history sizes of one organisation, timed interleaved (a shared machine: each round times
every page at every size once, so a busy spell falls on all of them alike).

Starts an embedded FerretDB (or uses `--mongodb-url`) with its data in `--data-dir`; a
database per size (`calls_list_<size>`) is seeded once by bulk insert (finished calls and
their keys in `storage.call_index`) and reused by later runs with the same `--data-dir`.
Pages of 50, newest first:

- first page; filtered by a common status (`no-answer`, 1 call in 10) and by a rare one
  (`failed`, 1 call in 1 000); by a rare assistant (1 call in 2 000);
- a page by cursor at 90 % of the history, and the rare status from there;
- a window of one hour in the middle of the history (`started_after` / `started_before`).

Each page is timed through the storage API with the process's warm caches (a serving
gateway), with `--cold` also on a store opened afresh for it (nothing cached in the
process), and with `--http` as `GET /calls` on `voice-gateway serve` (its own process).

    python bench/calls_list_bench.py [--sizes 100,100000] [--reps 30] [--data-dir DIR]
        [--cold] [--http]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId

from storage import CallFilter, CallStatus, Database, open_database
from storage.call_index import CALL_INDEX, index_entries
from storage.calls import CallRepository
from storage.documents import CallDocument
from tests.ferretdb_server import embedded_ferretdb

BASE = datetime(2025, 1, 1, tzinfo=UTC)
STEP_S = 37  # between two calls' starts
STATUSES = ["completed"] * 8 + ["no-answer", "busy"]
ASSISTANT = "asst-bench"
RARE_ASSISTANT = "asst-rare"
DB = "calls_list"
ROOT = Path(__file__).resolve().parents[1]


def _status(i: int) -> str:
    return "failed" if i % 1000 == 500 else STATUSES[i % len(STATUSES)]


async def _seed(database: Database, calls: int) -> str:
    """An organisation with `calls` finished calls (seeded once); its id."""
    org = (await database.accounts.ensure_organization(f"acme-{calls}")).id
    meta = CallDocument.get_pymongo_collection().database["bench_meta"]
    if await meta.find_one({"_id": org}) is not None:
        return org
    rows: list[dict[str, Any]] = []
    for i in range(calls):
        started = BASE + timedelta(seconds=STEP_S * i)
        rows.append(
            {
                "_id": ObjectId(),
                "org_id": org,
                "transport": "twilio",
                "call_sid": f"CAseed{calls}-{i}",
                "stream_sid": f"MZseed{calls}-{i}",
                "from_number": "+15550001111",
                "to_number": "+15550002222",
                "direction": "inbound" if i % 3 else "outbound",
                "assistant_id": RARE_ASSISTANT if i % 2000 == 1000 else ASSISTANT,
                "metadata": {"customer": f"c-{i}"},
                "status": _status(i),
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
    entries = index_entries(
        [
            (org, str(r["_id"]), r["started_at"], r["assistant_id"], r["direction"], r["status"])
            for r in rows
        ]
    )
    for row, entry in zip(rows, entries, strict=True):  # both in start order
        row["index_key"] = entry["_id"]
    calls_ = CallDocument.get_pymongo_collection()
    for target, docs in ((calls_, rows), (calls_.database[CALL_INDEX], entries)):
        for start in range(0, len(docs), 2000):
            await target.insert_many(docs[start : start + 2000], ordered=False)
    await meta.insert_one({"_id": org, "calls": calls})
    return org


def _cursor_at(calls: int) -> str:
    """A cursor just above call `calls // 10` (90 % of the history is newer)."""
    i = calls // 10
    started = BASE + timedelta(seconds=STEP_S * i)
    raw = json.dumps([started.isoformat(), "f" * 24]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _pages(org: str, calls: int) -> dict[str, tuple[CallFilter, str | None]]:
    middle = BASE + timedelta(seconds=STEP_S * (calls // 2))
    deep = _cursor_at(calls)
    return {
        "first page": (CallFilter(org_id=org), None),
        "status=no-answer (1 in 10)": (CallFilter(org_id=org, status=CallStatus.NO_ANSWER), None),
        "status=failed (1 in 1000)": (CallFilter(org_id=org, status=CallStatus.FAILED), None),
        "assistant rare (1 in 2000)": (CallFilter(org_id=org, assistant_id=RARE_ASSISTANT), None),
        "deep cursor (90 %)": (CallFilter(org_id=org), deep),
        "deep cursor, status=failed": (CallFilter(org_id=org, status=CallStatus.FAILED), deep),
        "one hour mid-history": (
            CallFilter(
                org_id=org, started_after=middle, started_before=middle + timedelta(hours=1)
            ),
            None,
        ),
    }


def _params(where: CallFilter, cursor: str | None) -> dict[str, str]:
    """The `GET /calls` query of a page."""
    out = {"limit": "50"}
    for name in ("assistant_id", "started_after", "started_before"):
        value = getattr(where, name)
        if value is not None:
            out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    for name in ("status", "direction"):
        value = getattr(where, name)
        if value is not None:
            out[name] = value.value
    if cursor is not None:
        out["cursor"] = cursor
    return out


async def _run(
    url: str,
    sizes: list[int],
    reps: int,
    cold: bool,
    http: bool,
    warmup: int = 1,
    only: str = "",
) -> dict[tuple[str, int], list[float]]:
    """One database, an organisation per size (`--sizes` are calls per organisation)."""
    database = await open_database(url, DB)
    orgs, keys = {}, {}
    try:
        for size in sizes:
            t0 = time.perf_counter()
            orgs[size] = await _seed(database, size)
            _, keys[size] = await database.accounts.create_key(orgs[size], name="bench")
            print(f"# {size} calls: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        await database.close()
    out: dict[tuple[str, int], list[float]] = {}
    warm = await open_database(url, DB)  # kept open: a serving gateway
    with ExitStack() as stack:
        client = None
        if http:
            base = stack.enter_context(_gateway(url))
            client = stack.enter_context(httpx.Client(base_url=base, timeout=600))
        try:
            for r in range(-warmup, reps):  # rounds below 0 warm up, not counted
                for size in sizes:
                    for name, (where, cursor) in _pages(orgs[size], size).items():
                        if only and not any(w in name for w in only.split(",")):
                            continue
                        variants: list[tuple[str, Database | _Fresh]] = [("warm", warm)]
                        if cold:
                            variants.append(("cold", _Fresh()))
                        for variant, db in variants:
                            t0 = time.perf_counter()
                            await db.calls.list_calls(where, limit=50, cursor=cursor)
                            ms = (time.perf_counter() - t0) * 1000
                            if r >= 0:
                                out.setdefault((f"{name} ({variant})", size), []).append(ms)
                        if client is not None:
                            params = _params(where, cursor)
                            t0 = time.perf_counter()
                            got = client.get(
                                "/calls", params=params, headers={"x-api-key": keys[size]}
                            )
                            ms = (time.perf_counter() - t0) * 1000
                            got.raise_for_status()
                            if r >= 0:
                                out.setdefault((f"{name} (GET /calls)", size), []).append(ms)
        finally:
            await warm.close()
    return out


@contextmanager
def _gateway(url: str) -> Iterator[str]:
    """`voice-gateway serve` on the bench's database, as its own process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MONGODB_URL": url,
        "MONGODB_DB": DB,
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": "test-twilio-token",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "LOG_LEVEL": "WARNING",
        "STT_PREWARM": "0",
    }
    env.pop("GATEWAY_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway did not come up")
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class _Fresh:
    """A store with nothing cached in the process (a gateway just started)."""

    @property
    def calls(self) -> CallRepository:
        return CallRepository()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,100000")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--data-dir", default=None, help="kept between runs (seeded once)")
    parser.add_argument("--mongodb-url", default=None)
    parser.add_argument("--cold", action="store_true", help="also time each page on a fresh store")
    parser.add_argument("--http", action="store_true", help="also time GET /calls on a gateway")
    parser.add_argument("--warmup", type=int, default=1, help="rounds not counted")
    parser.add_argument(
        "--pages", default="", help="only the pages whose name has one of these (,)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with ExitStack() as stack:
        url = args.mongodb_url
        if url is None:
            data = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory())
            Path(data).mkdir(parents=True, exist_ok=True)
            url = stack.enter_context(embedded_ferretdb(Path(data))).url
        figures = asyncio.run(
            _run(url, sizes, args.reps, args.cold, args.http, args.warmup, args.pages)
        )
    print("| page (50) | stored calls | p50 ms | p95 ms | n |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (name, size), samples in sorted(figures.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        p95 = statistics.quantiles(samples, n=20)[18] if len(samples) > 1 else samples[0]
        print(
            f"| {name} | {size} | {statistics.median(samples):.1f} | {p95:.1f} | {len(samples)} |"
        )


if __name__ == "__main__":
    main()
