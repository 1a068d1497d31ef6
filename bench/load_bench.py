"""Load test: N simulated Twilio calls from this process against one gateway process.

Starts `voice-gateway serve` (embedded FerretDB, local providers) as a separate process,
then for N in a rising series places N concurrent calls that talk to the agent, and reads
the gateway's own pacing counters at /metrics. Reports, per N: outbound frames, the share
sent > 20 ms behind schedule, the client-side arrival jitter, and the gateway's memory per
call. The answer is the largest N with < 0.1 % late frames.

    python bench/load_bench.py [--max-calls 64] [--call-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

LINES = ("What are your opening hours?", "How much does it cost?", "Can I book an appointment?")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) if match else 0


def _counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            out[name] = float(value)
    return out


async def _one_call(base: str, token: str, speech: list[bytes], seconds: float) -> list[float]:
    """Place one call that keeps talking to the agent; return frame inter-arrival gaps (ms)."""
    call = SimulatedTwilioCall(
        base_url=base, public_url=base, auth_token=token, record_arrivals=True
    )
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        await call.start(http)
    deadline = time.monotonic() + seconds
    try:
        await call.wait_agent_audio(within_s=30)
        i = 0
        while time.monotonic() < deadline:
            await call.wait_agent_silent(quiet_s=0.5, within_s=60)
            call.say(speech[i % len(speech)])
            i += 1
            await call.wait_said()
            await call.wait_agent_audio(within_s=30)
        await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        await call.stop()
    finally:
        await call.aclose()
    arrivals = call.log.arrivals
    # Gaps inside a stretch of speech (a pause > 200 ms separates two replies).
    return [(b - a) * 1000 for a, b in itertools.pairwise(arrivals) if b - a < 0.2]


async def _run_level(
    base: str, token: str, pid: int, n: int, seconds: float, speech: list[bytes]
) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base) as http:
        before = _counters((await http.get("/metrics")).text)
        rss_idle = _rss_kib(pid)
        tasks = [asyncio.create_task(_one_call(base, token, speech, seconds)) for _ in range(n)]
        await asyncio.sleep(min(seconds / 2, 8))
        rss_busy = _rss_kib(pid)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        after = _counters((await http.get("/metrics")).text)
    failures = [r for r in results if isinstance(r, BaseException)]
    gaps = [g for r in results if isinstance(r, list) for g in r]
    sent = (
        after["voice_gateway_outbound_frames_total"] - before["voice_gateway_outbound_frames_total"]
    )
    late = (
        after["voice_gateway_outbound_frames_late_total"]
        - before["voice_gateway_outbound_frames_late_total"]
    )
    underruns = (
        after["voice_gateway_outbound_underruns_total"]
        - before["voice_gateway_outbound_underruns_total"]
    )
    gaps.sort()
    return {
        "calls": n,
        "failed": len(failures),
        "frames": sent,
        "late_pct": 100.0 * late / sent if sent else 0.0,
        "underruns": underruns,
        "gap_p50_ms": statistics.median(gaps) if gaps else 0.0,
        "gap_p99_ms": gaps[int(len(gaps) * 0.99)] if gaps else 0.0,
        "mib_per_call": (rss_busy - rss_idle) / 1024 / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8,16,24,32,48")
    parser.add_argument("--call-seconds", type=float, default=20.0)
    args = parser.parse_args()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex
    data_dir = tempfile.mkdtemp(prefix="vg-bench-")
    env = {
        **os.environ,
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": token,
        "GATEWAY_API_KEY": "bench-" + uuid.uuid4().hex,  # weak keys are refused at start
        "DATA_DIR": data_dir,
        "LOG_LEVEL": "WARNING",
    }
    env.pop("MONGODB_URL", None)
    log = open(Path(data_dir) / "gateway.log", "wb")
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
        speech = [espeak_mulaw(line) for line in LINES]
        header = (
            f"{'calls':>5} {'failed':>6} {'frames':>8} {'late %':>7} "
            f"{'underruns':>9} {'gap p50':>8} {'gap p99':>8} {'MiB/call':>8}"
        )
        sys.stdout.write(header + "\n")
        best = 0
        for n in (int(x) for x in args.levels.split(",")):
            r = asyncio.run(_run_level(base, token, server.pid, n, args.call_seconds, speech))
            sys.stdout.write(
                f"{n:>5} {r['failed']:>6.0f} {r['frames']:>8.0f} {r['late_pct']:>7.3f} "
                f"{r['underruns']:>9.0f} "
                f"{r['gap_p50_ms']:>8.1f} {r['gap_p99_ms']:>8.1f} {r['mib_per_call']:>8.2f}\n"
            )
            sys.stdout.flush()
            if r["late_pct"] < 0.1 and r["failed"] == 0:
                best = n
            else:
                break
        sys.stdout.write(f"largest N with < 0.1 % late outbound frames: {best}\n")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
