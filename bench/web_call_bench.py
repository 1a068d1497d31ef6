"""Web calls: how long a browser waits, measured with a Python `livekit.rtc` participant
standing in for the browser.

Starts a real livekit-server (with Redis), FerretDB and `voice-gateway serve` (local
providers), creates an assistant, then places `--calls` web calls one after another. For
each: the latency of `POST /web-calls` itself; from its answer to the participant being
in the room with its microphone published (what the browser SDK does); and from the answer
to the greeting's first audio at the participant (the figure a user feels after pressing
the button, minus the page's own work). The participant then hangs up.

    python bench/web_call_bench.py [--calls 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ferretdb_server import embedded_ferretdb  # noqa: E402
from tests.integration.conftest import GatewayProcess, run_room_stack  # noqa: E402
from tests.livekit_caller import RoomCaller  # noqa: E402


async def _one_call(http: httpx.AsyncClient, key: str, assistant_id: str) -> tuple[float, ...]:
    sent = time.monotonic()
    posted = await http.post(
        "/web-calls", json={"assistant_id": assistant_id}, headers={"x-api-key": key}
    )
    answered = time.monotonic()
    posted.raise_for_status()
    web = posted.json()
    caller = RoomCaller()
    try:
        await caller.join(web["livekit_url"], web["token"])
        joined = time.monotonic()
        heard = await caller.wait_agent_audio(within_s=60)
    finally:
        await caller.leave()
    deadline = time.monotonic() + 30  # the next call starts once this one is over
    while time.monotonic() < deadline:
        call = (await http.get(f"/calls/{web['call_id']}", headers={"x-api-key": key})).json()
        if call["ended_at"]:
            break
        await asyncio.sleep(0.1)
    return tuple(1000 * x for x in (answered - sent, joined - answered, heard - answered))


async def _run(gateway: GatewayProcess, calls: int) -> list[tuple[float, ...]]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        created = await http.post(
            "/assistants",
            json={"name": "Bench", "system_prompt": "Help.", "greeting": "Hello, how can I help?"},
            headers={"x-api-key": gateway.api_key},
        )
        created.raise_for_status()
        await _one_call(http, gateway.api_key, created.json()["id"])  # warm-up, not counted
        return [await _one_call(http, gateway.api_key, created.json()["id"]) for _ in range(calls)]


def _row(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"| {name} | {statistics.median(values):.0f} | {p95:.0f} | {max(values):.0f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            embedded_ferretdb(work / "ferretdb") as db,
            run_room_stack(db.url, work, {"LOG_LEVEL": "WARNING"}) as (gateway, _),
        ):
            results = asyncio.run(_run(gateway, args.calls))
    post, join, greeting = (list(column) for column in zip(*results, strict=True))
    sys.stdout.write(
        f"{args.calls} web calls, one at a time (ms)\n"
        "| step | p50 | p95 | max |\n| --- | --- | --- | --- |\n"
        + "\n".join(
            (
                _row("POST /web-calls answered", post),
                _row("answer → participant joined, mic published", join),
                _row("answer → greeting's first audio at the participant", greeting),
            )
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
