"""Offered load above capacity: does admission control keep the admitted calls clean?

Starts the Deepgram, OpenAI and Cartesia servers of tests/fakes and one `voice-gateway
serve` configured with them and MAX_LIVE_CALLS=--bound (this script is the load generator,
in its own process). Then --offered simulated Twilio calls (default: twice the bound)
arrive --arrival-ms apart; each that is admitted talks to the agent for --call-seconds and
hangs up, each that is refused gets its `<Reject reason="busy"/>`. Reports calls
admitted and refused (and refused calls stored busy/gateway-full), the late share of the
admitted calls' outbound frames (sent > 20 ms behind schedule, the gateway's own
counters), live calls lost (admitted calls that did not end as their caller hung up), the
voice webhook's answer time (p50/p95/p99) for admitted and refused calls, and the
gateway's CPU.

    PYTHONPATH=. python bench/admission_bench.py [--bound 16] [--offered 32] [--call-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.provider_latency_bench import API_KEY, _fake, _free_port, _wait_up, fake_provider_env
from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

ROOT = Path(__file__).resolve().parent.parent
LAG_REFUSALS = 'voice_gateway_calls_refused_total{arrival="twilio",cause="loop-lag"}'
LINES = ("What are your opening hours?", "How much does it cost?", "Can I book an appointment?")


@dataclass
class Outcome:
    admitted: bool
    answer_ms: float  # the voice webhook's answer time
    call_id: str | None = None
    failed: str | None = None


def _counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _offer(
    base: str, token: str, speech: list[bytes], seconds: float, http: httpx.AsyncClient
) -> Outcome:
    call = SimulatedTwilioCall(base_url=base, public_url=base, auth_token=token)
    started = time.perf_counter()
    try:
        stream_url, params = await call.answer(http)
    except RuntimeError as exc:  # no <Connect><Stream>: refused
        answer_ms = (time.perf_counter() - started) * 1000
        if "Reject" not in str(exc):
            return Outcome(False, answer_ms, failed=str(exc)[:80])
        return Outcome(False, answer_ms)
    answer_ms = (time.perf_counter() - started) * 1000
    try:
        await call.connect(stream_url, params)
        deadline = time.monotonic() + seconds
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
    except (TimeoutError, OSError, RuntimeError) as exc:
        return Outcome(True, answer_ms, call.call_id, failed=f"{type(exc).__name__}: {exc}"[:80])
    finally:
        await call.aclose()
    return Outcome(True, answer_ms, call.call_id)


async def _run(
    base: str, token: str, pid: int, offered: int, arrival_s: float, seconds: float
) -> dict[str, Any]:
    speech = [espeak_mulaw(line) for line in LINES]
    limits = httpx.Limits(max_connections=offered + 10)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        before = _counters((await http.get("/metrics")).text)
        cpu_before, wall_before = _cpu_s(pid), time.monotonic()
        tasks = []
        for _ in range(offered):
            tasks.append(asyncio.create_task(_offer(base, token, speech, seconds, http)))
            await asyncio.sleep(arrival_s)
        outcomes = await asyncio.gather(*tasks)
        cpu = (_cpu_s(pid) - cpu_before) / (time.monotonic() - wall_before)
        after = _counters((await http.get("/metrics")).text)
        headers = {"x-api-key": API_KEY}
        lost: collections.Counter[str] = collections.Counter()
        for o in outcomes:
            if o.admitted and o.call_id:
                stored = (await http.get(f"/calls/{o.call_id}", headers=headers)).json()
                if stored.get("end_reason") != "caller-hung-up" or o.failed:
                    lost[f"{stored.get('end_reason')} / {o.failed}"] += 1
        refused_n = sum(1 for o in outcomes if not o.admitted and o.failed is None)
        deadline = time.monotonic() + 60  # refusals are stored after their answer, queued
        while True:
            params: dict[str, str | int] = {"status": "busy", "limit": 200}
            busy = await http.get("/calls", headers=headers, params=params)
            stored_busy = sum(1 for c in busy.json()["items"] if c["end_reason"] == "gateway-full")
            if stored_busy >= refused_n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    sent, late = (
        delta("voice_gateway_outbound_frames_total"),
        delta("voice_gateway_outbound_frames_late_total"),
    )
    admitted = [o for o in outcomes if o.admitted]
    refused = [o for o in outcomes if not o.admitted and o.failed is None]
    return {
        "offered": offered,
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_stored": stored_busy,
        "errors": sum(1 for o in outcomes if not o.admitted and o.failed is not None),
        "frames": sent,
        "late_pct": 100.0 * late / sent if sent else 0.0,
        "lost": sum(lost.values()),
        "lost_why": "; ".join(f"{n} x {why}" for why, n in lost.most_common(3)),
        "refused_lag": delta(LAG_REFUSALS),
        "unstored": delta("voice_gateway_refused_calls_unstored_total"),
        "lag_ms": after.get("voice_gateway_event_loop_lag_ms", 0.0),
        "admit_ms_p50": _pct([o.answer_ms for o in admitted], 0.5),
        "admit_ms_p95": _pct([o.answer_ms for o in admitted], 0.95),
        "refuse_ms_p50": _pct([o.answer_ms for o in refused], 0.5),
        "refuse_ms_p95": _pct([o.answer_ms for o in refused], 0.95),
        "refuse_ms_p99": _pct([o.answer_ms for o in refused], 0.99),
        "cpu_pct": 100.0 * cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound", type=int, default=16, help="MAX_LIVE_CALLS")
    parser.add_argument("--offered", type=int, default=0, help="calls offered (0: 2 x bound)")
    parser.add_argument("--arrival-ms", type=float, default=100.0)
    parser.add_argument("--call-seconds", type=float, default=20.0)
    parser.add_argument("--max-loop-lag-ms", type=float, default=50.0)
    parser.add_argument("--ms-per-char", type=float, default=45.0, help="the TTS fake's pace")
    args = parser.parse_args()
    offered = args.offered or 2 * args.bound

    data_dir = Path(tempfile.mkdtemp(prefix="vg-admission-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    dg_url, dg = _fake("deepgram_server", env, data_dir)
    oa_url, oa = _fake("openai_server", env, data_dir)
    ct_url, ct = _fake("cartesia_server", env, data_dir)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex
    gateway_env = {
        **env,
        "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": token,
        "GATEWAY_API_KEY": API_KEY,
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "MAX_LIVE_CALLS": str(args.bound),
        "MAX_LOOP_LAG_MS": str(args.max_loop_lag_ms),
        "TURN_VAD": "energy",
        "TURN_END_OF_TURN": "silence",
        "VAD_SILENCE_MS": "300",
        **fake_provider_env(dg_url, oa_url, ct_url),
    }
    gateway_env.pop("MONGODB_URL", None)
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    with dg, oa, ct, (data_dir / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            serve, env=gateway_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_up(base + "/health", gateway)
            tts = {"ms_per_char": args.ms_per_char}
            httpx.post(ct_url + "/control", json=tts).raise_for_status()
            r = asyncio.run(
                _run(base, token, gateway.pid, offered, args.arrival_ms / 1000, args.call_seconds)
            )
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
    sys.stdout.write(
        f"MAX_LIVE_CALLS={args.bound}, {offered} calls offered {args.arrival_ms:.0f} ms apart, "
        f"{args.call_seconds:.0f} s each (cloud-provider fakes, energy VAD)\n"
        f"admitted {r['admitted']}, refused {r['refused']} (stored busy/gateway-full: "
        f"{r['refused_stored']:.0f}), other errors {r['errors']}\n"
        f"refused for loop lag: {r['refused_lag']:.0f}; not stored (too many at once): "
        f"{r['unstored']:.0f}; loop lag at the end {r['lag_ms']:.1f} ms\n"
        f"admitted calls: {r['frames']:.0f} frames out, late {r['late_pct']:.3f} %, "
        f"lost {r['lost']} {r['lost_why']}\n"
        f"voice webhook answer (ms): admitted p50 {r['admit_ms_p50']:.1f} p95 "
        f"{r['admit_ms_p95']:.1f}; refused p50 {r['refuse_ms_p50']:.1f} p95 "
        f"{r['refuse_ms_p95']:.1f} p99 {r['refuse_ms_p99']:.1f}\n"
        f"gateway CPU: {r['cpu_pct']:.1f} % of a core over the run\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
