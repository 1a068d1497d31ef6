"""Caller lookup overhead on time-to-greeting.

Starts `voice-gateway serve` (embedded FerretDB, local providers) and a lookup endpoint on
loopback that answers at once (tests/lookup_server.py: uvicorn, signature checked). Two
assistants speak the same greeting: one without a lookup ("Hello Dana, this is the
shop."), one whose lookup fills it ("Hello {{name}}, this is the shop."). Calls of both
are placed one at a time, alternating, by the simulated Twilio caller; each is measured
from the signed `POST /twilio/voice` to (a) the TwiML answer and (b) the first agent audio
frame at the caller, then hung up. Prints p50 / p95 / p99 of both and the overhead.

    python bench/lookup_bench.py [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from gateway.demo.simulated_twilio import SimulatedTwilioCall
from tests.lookup_server import LookupServer, Scripted, run_lookup_server

API_KEY = secrets.token_urlsafe(32)
H = {"x-api-key": API_KEY}
PLAIN, LOOKED_UP = "+15550140001", "+15550140002"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _setup(base: str, lookup: LookupServer) -> None:
    lookup.scripts["/crm"] = Scripted.json({"metadata": {"name": "Dana"}})
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        lookup.secrets.append((await http.get("/webhooks/secret", headers=H)).json()["secret"])
        for number, greeting, url in (
            (PLAIN, "Hello Dana, this is the shop.", None),
            (LOOKED_UP, "Hello {{name}}, this is the shop.", lookup.url("/crm")),
        ):
            claimed = await http.post("/numbers", json={"number": number}, headers=H)
            claimed.raise_for_status()
            body = {
                "name": "Shop",
                "system_prompt": "You answer questions about the shop.",
                "greeting": greeting,
                "phone_numbers": [number],
                "inbound_lookup_url": url,
            }
            (await http.post("/assistants", json=body, headers=H)).raise_for_status()


async def _one_call(base: str, token: str, number: str) -> tuple[float, float]:
    """(ms to the TwiML answer, ms to the first agent audio frame) of one call."""
    call = SimulatedTwilioCall(base_url=base, public_url=base, auth_token=token, to_number=number)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        started = time.monotonic()
        stream_url, params = await call.answer(http)
        answered = time.monotonic()
        await call.connect(stream_url, params)
        try:
            await call.wait_agent_audio(within_s=30)
            first = call.log.first_media_at
            assert first is not None
            await call.stop()
        finally:
            await call.aclose()
    return (answered - started) * 1000, (first - started) * 1000


async def _run(base: str, token: str, lookup: LookupServer, calls: int) -> None:
    await _setup(base, lookup)
    results: dict[str, list[tuple[float, float]]] = {PLAIN: [], LOOKED_UP: []}
    for number in (PLAIN, LOOKED_UP):  # one warm-up call each, not counted
        await _one_call(base, token, number)
    for _ in range(calls):
        for number in (PLAIN, LOOKED_UP):
            results[number].append(await _one_call(base, token, number))
    async with httpx.AsyncClient(base_url=base) as http:
        metrics = (await http.get("/metrics")).text
    counted = dict(re.findall(r'inbound_lookups_total\{outcome="(\w+)"\} (\d+)', metrics))
    out = sys.stdout
    out.write(f"{calls} calls each, one at a time; lookup outcomes counted: {counted}\n")
    out.write(f"{'':<52} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}\n")
    medians: dict[tuple[str, int], float] = {}
    for label, number in (("no lookup", PLAIN), ("lookup answering at once", LOOKED_UP)):
        for idx, what in ((0, "voice webhook -> TwiML"), (1, "voice webhook -> 1st frame")):
            values = [r[idx] for r in results[number]]
            medians[(number, idx)] = statistics.median(values)
            out.write(
                f"{label + ': ' + what:<52} {statistics.median(values):>8.1f} "
                f"{_pct(values, 0.95):>8.1f} {_pct(values, 0.99):>8.1f}\n"
            )
    for idx, what in ((0, "TwiML answer"), (1, "time-to-greeting")):
        overhead = medians[(LOOKED_UP, idx)] - medians[(PLAIN, idx)]
        out.write(f"lookup overhead on {what} (median difference): {overhead:+.1f} ms\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex
    data_dir = tempfile.mkdtemp(prefix="vg-lookup-bench-")
    env = {
        **os.environ,
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": token,
        "GATEWAY_API_KEY": API_KEY,
        "DATA_DIR": data_dir,
        "LOG_LEVEL": "WARNING",
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    }
    env.pop("MONGODB_URL", None)
    with (
        run_lookup_server() as lookup,
        open(Path(data_dir) / "gateway.log", "wb") as log,
    ):
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.stderr.write("gateway did not start; see " + log.name + "\n")
                    return 1
                time.sleep(0.2)
            asyncio.run(_run(base, token, lookup, args.calls))
            return 0
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    sys.exit(main())
