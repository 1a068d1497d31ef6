"""Dashboard page load: the calls list with a long call history, in headless Chromium.

Starts an embedded FerretDB (or uses `--mongodb-url`), stores `--calls` finished calls of
one organisation (inserted in bulk: this bench measures reading them), starts `voice-gateway
serve` as its own process, signs in through the page, then times:

- the calls list's HTML from the server (`GET /dashboard/calls`, the session cookie),
- `GET /calls?limit=50` (the JSON API the page mirrors),
- the whole page in Chromium: navigation start to the `load` event (Navigation Timing),
  with its script and stylesheet cached as a returning operator has them.

Then, with a real livekit-server (and Redis) beside a second gateway, `--web-calls` web calls
from the dashboard, one after another: from the click on "Talk to this assistant" to the
greeting's first loud audio in the page (WebAudio), with the moments in between (the
`POST /web-calls` answer, the room joined, the microphone published). Local providers.

    python bench/dashboard_bench.py [--calls 10000] [--loads 20] [--web-calls 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from bson import ObjectId

from storage import AssistantConfig, open_database
from storage.call_index import CALL_INDEX, BulkCall, index_entries
from storage.documents import CallDocument
from tests.browser import launch_chromium
from tests.ferretdb_server import embedded_ferretdb
from tests.integration.conftest import run_gateway, run_room_stack

ROOT = Path(__file__).resolve().parents[1]


async def seed(url: str, db: str, calls: int) -> str:
    """One organisation with `calls` finished calls (with turns' worth of fields); its key."""
    database = await open_database(url, db)
    try:
        org = await database.accounts.ensure_organization("acme")
        _, key = await database.accounts.create_key(org.id, name="bench")
        assistant = await database.assistants.create(
            org.id, AssistantConfig(name="Front desk", system_prompt="Help.")
        )
        collection = CallDocument.get_pymongo_collection()  # bulk, past the repository
        base = datetime(2026, 1, 1, tzinfo=UTC)
        statuses = ["completed"] * 8 + ["no-answer", "busy"]
        batch: list[dict[str, Any]] = []
        keyed: list[BulkCall] = []
        for i in range(calls):
            started = base + timedelta(seconds=37 * i)
            batch.append(
                {
                    "_id": ObjectId(),
                    "org_id": org.id,
                    "transport": "twilio",
                    "call_sid": f"CA{uuid.uuid4().hex}",
                    "from_number": "+15550001111",
                    "to_number": "+15550002222",
                    "direction": "inbound" if i % 3 else "outbound",
                    "assistant_id": assistant.id,
                    "metadata": {"customer": f"c-{i}"},
                    "status": statuses[i % len(statuses)],
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
            row = batch[-1]
            keyed.append(
                (org.id, str(row["_id"]), started, assistant.id, row["direction"], row["status"])
            )
            if len(batch) == 1000:
                await collection.insert_many(batch)
                batch = []
        if batch:
            await collection.insert_many(batch)
        # Their keys too, as `create_call` stores them (`storage.call_index`).
        entries = index_entries(keyed)
        for start in range(0, len(entries), 1000):
            await collection.database[CALL_INDEX].insert_many(entries[start : start + 1000])
        return key
    finally:
        await database.close()


def _row(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20) if len(samples) > 1 else samples * 19
    return f"| {name} | {statistics.median(samples):.1f} | {q[18]:.1f} | {len(samples)} |"


async def measure(base: str, key: str, loads: int) -> list[str]:
    async with launch_chromium() as launched:
        context = await launched.browser.new_context()
        page = await context.new_page()
        await page.goto(base + "/dashboard/login")
        await page.get_by_label("API key").fill(key)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_selector("tr[data-call-id]")
        cookies = {c["name"]: c["value"] for c in await context.cookies()}
        browser_ms, dom_ms = [], []
        for _ in range(loads):
            await page.goto(base + "/dashboard/calls", wait_until="load")
            timing = await page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return [n.loadEventEnd - n.startTime, n.domContentLoadedEventEnd - n.startTime];"
                " })()"
            )
            browser_ms.append(timing[0])
            dom_ms.append(timing[1])
        rows = await page.locator("tr[data-call-id]").count()
        await context.close()
    server_ms, api_ms = [], []
    async with httpx.AsyncClient(base_url=base, cookies=cookies, timeout=60) as http:
        for _ in range(loads):
            t0 = time.perf_counter()
            answer = await http.get("/dashboard/calls")
            server_ms.append((time.perf_counter() - t0) * 1000)
            assert answer.status_code == 200
            t0 = time.perf_counter()
            answer = await http.get("/calls?limit=50", headers={"x-api-key": key})
            api_ms.append((time.perf_counter() - t0) * 1000)
            assert answer.status_code == 200
    return [
        f"rows on the first page: {rows}",
        "| what | p50 ms | p95 ms | n |",
        "| --- | --- | --- | --- |",
        _row("GET /dashboard/calls (server, HTML)", server_ms),
        _row("GET /calls?limit=50 (JSON API)", api_ms),
        _row("calls list in Chromium: DOMContentLoaded", dom_ms),
        _row("calls list in Chromium: load", browser_ms),
    ]


async def web_calls(url: str, work: Path, calls: int) -> list[str]:
    """Button -> greeting, for `calls` web calls placed from the dashboard in Chromium."""
    with run_room_stack(url, work) as (gw, _):
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as http:
            made = await http.post(
                "/assistants",
                headers={"x-api-key": gw.api_key},
                json={
                    "name": "Web agent",
                    "system_prompt": "Help.",
                    "greeting": "Hello, you reached the web agent. How can I help you today?",
                },
            )
            made.raise_for_status()
            moments: list[list[float]] = []
            silent = work / "silent.wav"  # the caller says nothing (no fake beeps)
            with wave.open(str(silent), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(16000)
                out.writeframes(b"\0\0" * 16000 * 60)
            async with launch_chromium(fake_microphone=silent) as launched:
                page = await (await launched.browser.new_context()).new_page()
                await page.goto(gw.base_url + "/dashboard/login")
                await page.get_by_label("API key").fill(gw.api_key)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_selector("#call-rows")
                for i in range(calls + 1):  # the first warms Chromium and livekit-server up
                    await page.goto(gw.base_url + "/dashboard/assistants")
                    await page.get_by_role("button", name="Talk to Web agent").click()
                    await page.wait_for_function(
                        "() => window.vgWebCall.greetingAt !== undefined", timeout=60_000
                    )
                    w = await page.evaluate(
                        "(() => { const w = window.vgWebCall, s = w.session;"
                        " return [w.clickedAt, s.startedAt, s.connectedAt, s.micPublishedAt,"
                        " w.greetingAt, w.callId]; })()"
                    )
                    await page.get_by_role("button", name="Hang up").click()
                    call_id = w[5]
                    for _ in range(300):  # until the call has ended
                        call = (
                            await http.get(f"/calls/{call_id}", headers={"x-api-key": gw.api_key})
                        ).json()
                        if call["ended_at"]:
                            break
                        await asyncio.sleep(0.1)
                    if i:
                        clicked = w[0]
                        moments.append(
                            [w[1] - clicked, w[2] - clicked, w[3] - clicked, w[4] - clicked]
                        )
    columns = list(zip(*moments, strict=True))
    return [
        f"web calls from the dashboard: {calls} (after one warm-up), local providers",
        "| from the click to | p50 ms | p95 ms | n |",
        "| --- | --- | --- | --- |",
        _row("POST /web-calls answered (joining starts)", list(columns[0])),
        _row("room joined", list(columns[1])),
        _row("microphone published", list(columns[2])),
        _row("greeting heard in the page (WebAudio)", list(columns[3])),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--web-calls", type=int, default=7, help="0: skip (needs livekit-server)")
    parser.add_argument("--mongodb-url", default=None, help="default: an embedded FerretDB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = args.mongodb_url or stack.enter_context(embedded_ferretdb(Path(tmp))).url
        db = "dash_bench_" + uuid.uuid4().hex[:8]
        t0 = time.perf_counter()
        key = asyncio.run(seed(url, db, args.calls))
        print(f"stored {args.calls} calls in {time.perf_counter() - t0:.1f} s")
        env = {"MONGODB_DB": db, "GATEWAY_API_KEY": None, "LOG_LEVEL": "WARNING"}
        with run_gateway(url, Path(tmp), env) as gw:
            for line in asyncio.run(measure(gw.base_url, key, args.loads)):
                print(line)
        if args.web_calls:
            for line in asyncio.run(web_calls(url, Path(tmp), args.web_calls)):
                print(line)


if __name__ == "__main__":
    main()
