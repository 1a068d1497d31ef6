"""Management API latency: what an operator's requests cost, with a realistic call history.

Starts an embedded FerretDB, seeds two organisations with `--calls` calls each, starts
`voice-gateway serve` as its own process (Twilio REST pointed at the local Twilio fake),
then times sequential requests from one client on loopback:

- `GET /health` (no key: the floor of the HTTP stack),
- `GET /assistants/{id}` (key lookup by hash + one find),
- `GET /calls?limit=50`: the first page, and a page deep in the history reached by cursor
  (keyset pagination: a deep page should cost what the first one does),
- `GET /calls` with a status filter,
- `POST /call/outbound` through the `twilio` SDK to the fake (store, REST create, sid).

    python bench/api_bench.py [--calls 3000] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from storage import (
    AssistantConfig,
    CallStatus,
    Direction,
    NewCall,
    open_database,
)
from tests.ferretdb_server import embedded_ferretdb

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: process exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


async def _seed(url: str, db: str, calls: int) -> tuple[str, str]:
    """Two organisations with `calls` calls each; returns (key of the first, assistant id)."""
    database = await open_database(url, db)
    try:
        keys = []
        base = datetime(2026, 1, 1, tzinfo=UTC)
        statuses = [CallStatus.COMPLETED] * 8 + [CallStatus.NO_ANSWER, CallStatus.BUSY]
        for name in ("acme", "globex"):
            org = await database.accounts.ensure_organization(name)
            _, key = await database.accounts.create_key(org.id, name="bench")
            keys.append(key)
            assistant = await database.assistants.create(
                org.id, AssistantConfig(name="bench", system_prompt="Help {{to_number}}.")
            )
            for i in range(calls):
                call = await database.calls.create_call(
                    NewCall(
                        org_id=org.id,
                        transport="twilio",
                        call_sid=f"CA{name}{i}",
                        from_number="+15550001111",
                        to_number="+15550002222",
                        direction=Direction.OUTBOUND if i % 3 else Direction.INBOUND,
                        assistant_id=assistant.id,
                    ),
                    started_at=base + timedelta(seconds=37 * i),
                )
                status = statuses[i % len(statuses)]
                await database.calls.finish_call(
                    call.id, status=status, end_reason="bench", ended_at=call.started_at
                )
            if name == "acme":
                acme_assistant = assistant.id
        return keys[0], acme_assistant
    finally:
        await database.close()


def _timed(http: httpx.Client, n: int, request: object) -> list[float]:
    send = request  # a zero-argument callable returning a response
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = send()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
        if response.status_code >= 400:
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
    return out


def _row(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"| {name} | {statistics.median(samples):.2f} | {q[94]:.2f} | {len(samples)} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="calls per organisation")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    n = args.requests
    with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as ferret:
        db = "bench_" + uuid.uuid4().hex[:8]
        t0 = time.perf_counter()
        key, assistant_id = asyncio.run(_seed(ferret.url, db, args.calls))
        seeded_s = time.perf_counter() - t0
        fake_port, port = _free_port(), _free_port()
        fake = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.fakes.twilio_server:app",
             "--port", str(fake_port), "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "MONGODB_URL": ferret.url,
            "MONGODB_DB": db,
            "PUBLIC_URL": base,
            "TWILIO_AUTH_TOKEN": "test-twilio-token",
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{fake_port}",
            "LOG_LEVEL": "WARNING",
            "STT_PREWARM": "0",
        }
        env.pop("GATEWAY_API_KEY", None)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait(f"http://127.0.0.1:{fake_port}/control/log", fake)
            _wait(base + "/health", gateway)
            h = {"x-api-key": key}
            with httpx.Client(base_url=base, timeout=30) as http:
                # Walk to a page deep in the history once, to time it afterwards.
                cursor, pages = None, 0
                while pages < args.calls // 50 - 2:
                    params = {"limit": 50} | ({"cursor": cursor} if cursor else {})
                    page = http.get("/calls", params=params, headers=h)
                    cursor = page.json()["next_cursor"]
                    pages += 1
                deep = {"limit": 50} | ({"cursor": cursor} if cursor else {})
                body = {
                    "assistant_id": assistant_id,
                    "to_number": "+15558880002",
                    "from_number": "+15557770001",
                    "call_service": "twilio",
                }
                rows = [
                    _row("GET /health (no key)", _timed(http, n, lambda: http.get("/health"))),
                    _row(
                        "GET /assistants/{id}",
                        _timed(http, n, lambda: http.get(f"/assistants/{assistant_id}", headers=h)),
                    ),
                    _row(
                        "GET /calls?limit=50 (first page)",
                        _timed(http, n, lambda: http.get("/calls?limit=50", headers=h)),
                    ),
                    _row(
                        f"GET /calls?limit=50 (page {pages + 1}, by cursor)",
                        _timed(http, n, lambda: http.get("/calls", params=deep, headers=h)),
                    ),
                    _row(
                        "GET /calls?status=busy&limit=50",
                        _timed(http, n, lambda: http.get("/calls?status=busy&limit=50", headers=h)),
                    ),
                    _row(
                        "POST /call/outbound (twilio SDK to the local fake)",
                        _timed(http, n, lambda: http.post("/call/outbound", json=body, headers=h)),
                    ),
                ]
        finally:
            for proc in (gateway, fake):
                proc.terminate()
                proc.wait(timeout=15)
    print(
        f"seeded {2 * args.calls} calls in 2 organisations in {seeded_s:.1f} s "
        "(FerretDB 1.24 on SQLite)"
    )
    print("| request | p50 ms | p95 ms | n |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
