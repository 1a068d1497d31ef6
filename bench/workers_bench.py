"""`serve --workers 1` against `serve --workers 2`: the same simulated Twilio calls, the
gateway's CPU and its late frames.

Starts the protocol-faithful Deepgram, OpenAI and Cartesia servers of tests/fakes (they
answer at once) and, for each worker count, `voice-gateway serve --workers W` on its
embedded FerretDB configured with all three (energy VAD, silence end of turn); then this
process places `--calls` concurrent calls (started over `--ramp-s`) that stay silent after
the greeting (`--mode silent`) or ask a question every few seconds (`--mode talking`) for a
`--seconds` window that opens once every call was greeted (or refused: admission's
`<Reject>`). Reports, per W: calls failed and refused, the gateway
processes' CPU over the window (% of one core, and per call), FerretDB's apart, the
outbound frames sent > 20 ms behind schedule (each worker's own counters: /metrics read on
the connection that /health said which worker it reached), the caller-side gaps between
agent frames, for talking calls the reply latency (end of speech to first frame out)
p50 / p99, and this process's own CPU (the simulated callers, on uvloop). Load generator,
fakes and gateway share the cores.

    python bench/workers_bench.py [--workers 1,2] [--calls 40] [--mode silent|talking]
        [--seconds 20] [--ramp-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvloop

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Talking callers start asking at offsets spread over this long, as real callers' turns are
# spread: started together (as before 2026-12-02), every call ended its turns in the same
# instant, and the gateway met 100 replies at once every few seconds.
STAGGER_S = 5.0
API_KEY = secrets.token_urlsafe(32)
LINES = ("What are your opening hours?", "How much does it cost?", "Can I book an appointment?")
TICKS = os.sysconf("SC_CLK_TCK")


def run_load(level: Coroutine[Any, Any, T]) -> T:
    """Run the simulated callers on uvloop, as the gateway runs: they share the machine's
    cores with it, so the load generator should cost as little as it can."""
    return uvloop.run(level)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def _process(
    args: list[str], url: str, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(url, proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _fake(name: str) -> tuple[str, list[str]]:
    port = _free_port()
    args = [sys.executable, "-m", "uvicorn", f"tests.fakes.{name}_server:app", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    return f"http://127.0.0.1:{port}", args


def provider_fakes(stack: contextlib.ExitStack, env: dict[str, str], work: Path) -> dict[str, str]:
    """Start the Deepgram, OpenAI and Cartesia fakes (logs in `work`) for as long as
    `stack` lasts, Cartesia paced at 20 ms per character; the gateway's settings for them
    (energy VAD, silence end of turn)."""
    fakes = {name: _fake(name) for name in ("deepgram", "openai", "cartesia")}
    for name, (url, fake_args) in fakes.items():
        stack.enter_context(_process(fake_args, url + "/", env, work / f"{name}.log"))
    dg, oa, ct = (fakes[n][0] for n in ("deepgram", "openai", "cartesia"))
    httpx.post(ct + "/control", json={"ms_per_char": 20}).raise_for_status()
    return {
        "TURN_VAD": "energy",
        "TURN_END_OF_TURN": "silence",
        "VAD_SILENCE_MS": "300",
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "DEEPGRAM_BASE_URL": dg.replace("http://", "ws://"),
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": oa + "/v1",
        "CARTESIA_API_KEY": "test-cartesia-key",
        "CARTESIA_BASE_URL": ct,
    }


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, with their command names."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = comm
    return found


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (0 once it is gone)."""
    return sum(_cpu_split_s(pid))


def _cpu_split_s(pid: int) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of process `pid` ((0, 0) once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def _counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            out[name] = float(value)
    return out


async def _per_worker_metrics(base: str, workers: int) -> dict[int, dict[str, float]]:
    """Each worker's /metrics: /health then /metrics on one keep-alive connection (one
    worker), over new connections until every worker was reached."""
    found: dict[int, dict[str, float]] = {}
    for _ in range(500):
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            worker = int((await http.get("/health")).json().get("worker", 0))
            if worker not in found:
                found[worker] = _counters((await http.get("/metrics")).text)
                if "voice_gateway_workers" in found[worker]:
                    # A gateway whose /metrics sums its workers (gateway/worker_metrics.py):
                    # one scrape is the whole gateway's.
                    return {worker: found[worker]}
        if len(found) == workers:
            return found
    raise RuntimeError(f"reached only workers {sorted(found)}")


def _frames(metrics: dict[int, dict[str, float]]) -> tuple[float, float]:
    sent = sum(m["voice_gateway_outbound_frames_total"] for m in metrics.values())
    late = sum(m["voice_gateway_outbound_frames_late_total"] for m in metrics.values())
    return sent, late


async def _one_call(
    base: str,
    token: str,
    speech: list[bytes] | None,
    steady: asyncio.Event,
    done: asyncio.Event,
    on_greeted: Callable[[bool], None],
    delay_s: float,
    offset_s: float = 0.0,
) -> tuple[str | None, list[float]] | None:
    """One call: its id and the gaps between agent frames; None if it was refused."""
    await asyncio.sleep(delay_s)  # arrivals spread over the ramp, not all in one instant
    call = SimulatedTwilioCall(
        base_url=base, public_url=base, auth_token=token, record_arrivals=True
    )
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        try:
            stream_url, params = await call.answer(http)
        except RuntimeError as exc:  # no <Connect><Stream>: refused (admission), or broken
            if "Reject" not in str(exc):
                raise
            on_greeted(False)
            return None
        await call.connect(stream_url, params)
    try:
        await call.wait_agent_audio(within_s=60)
        await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        on_greeted(True)
        await steady.wait()
        await asyncio.sleep(offset_s)  # callers do not all ask at the same instant
        i = 0
        while not done.is_set():
            if speech is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 1.0)
                continue
            call.say(speech[i % len(speech)])
            i += 1
            await call.wait_said()
            await call.wait_agent_audio(within_s=60)
            await call.wait_agent_silent(quiet_s=0.5, within_s=60)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 2.0)  # a pause between questions
        await call.stop()
    finally:
        await call.aclose()
    arrivals = call.log.arrivals
    return call.call_id, [(b - a) * 1000 for a, b in itertools.pairwise(arrivals) if b - a < 0.2]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run_level(
    base: str,
    token: str,
    supervisor: int,
    workers: int,
    calls: int,
    seconds: float,
    talk: bool,
    ramp_s: float,
) -> dict[str, float]:
    speech = [espeak_mulaw(line) for line in LINES] if talk else None
    steady, done, all_greeted, greeted = asyncio.Event(), asyncio.Event(), asyncio.Event(), [0]

    def on_greeted(admitted: bool) -> None:  # greeted, or refused: either way settled
        greeted[0] += 1
        if greeted[0] == calls:
            all_greeted.set()

    tasks = [
        asyncio.create_task(
            _one_call(
                base,
                token,
                speech,
                steady,
                done,
                on_greeted,
                ramp_s * i / calls,
                STAGGER_S * i / calls if talk else 0.0,
            )
        )
        for i in range(calls)
    ]
    # Until every call was greeted (or one failed: it is counted below).
    waiter = asyncio.create_task(all_greeted.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    # `serve` itself (the supervisor, or the one gateway) and its children: the workers and
    # the embedded FerretDB, counted apart.
    procs = _children(supervisor)
    gateway = [supervisor, *(p for p, name in procs.items() if name != "ferretdb")]
    ferretdb = [p for p, name in procs.items() if name == "ferretdb"]
    steady.set()
    if talk:  # the window opens once every caller has started asking
        await asyncio.sleep(STAGGER_S)
    before = await _per_worker_metrics(base, workers)
    t0 = time.monotonic()
    split0 = [_cpu_split_s(p) for p in gateway]  # (user, kernel) of each, read once
    cpu0 = sum(map(sum, split0)), sum(_cpu_s(p) for p in ferretdb)
    kernel0 = sum(kernel for _, kernel in split0)
    load0 = _cpu_s(os.getpid())  # this process: the simulated callers
    await asyncio.sleep(seconds)
    split1 = [_cpu_split_s(p) for p in gateway]
    cpu1 = sum(map(sum, split1)), sum(_cpu_s(p) for p in ferretdb)
    kernel1 = sum(kernel for _, kernel in split1)
    load1 = _cpu_s(os.getpid())
    elapsed = time.monotonic() - t0
    after = await _per_worker_metrics(base, workers)
    done.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    refused = sum(1 for r in results if r is None)
    for kind in sorted({f"{type(r).__name__}: {r}"[:120] for r in failed}):
        sys.stderr.write(f"  a call failed: {kind}\n")
    gaps = [g for r in results if isinstance(r, tuple) for g in r[1]]
    replies: list[float] = []
    if talk:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            for r in results:
                if isinstance(r, tuple) and r[0] is not None:
                    got = await http.get(f"/calls/{r[0]}", headers={"x-api-key": API_KEY})
                    turns = got.json().get("transcript", [])
                    replies += [
                        t["latency"]["first_frame_out"]
                        for t in turns
                        if t.get("latency") and "first_frame_out" in t["latency"]
                    ]
    (sent0, late0), (sent1, late1) = _frames(before), _frames(after)
    sent = sent1 - sent0
    gateway_pct = 100 * (cpu1[0] - cpu0[0]) / elapsed
    return {
        "failed": len(failed),
        "refused": refused,
        "cpu_pct": gateway_pct,
        "cpu_per_call": gateway_pct / max(1, calls - refused),
        # The share of the gateway's CPU spent in the kernel (socket reads and writes, epoll).
        "kernel_share": (kernel1 - kernel0) / max(1e-9, cpu1[0] - cpu0[0]),
        "ferretdb_pct": 100 * (cpu1[1] - cpu0[1]) / elapsed,
        "load_pct": 100 * (load1 - load0) / elapsed,
        "frames": sent,
        "late_pct": 100 * (late1 - late0) / sent if sent else 0.0,
        "gap_p50": _pct(gaps, 0.5),
        "gap_p99": _pct(gaps, 0.99),
        "reply_p50": _pct(replies, 0.5),
        "reply_p99": _pct(replies, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--mode", choices=("silent", "talking"), default="silent")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady window")
    parser.add_argument("--ramp-s", type=float, default=10.0, help="calls start over this long")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vg-workers-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sys.stdout.write(
        f"{args.calls} {args.mode} calls started over {args.ramp_s:g} s, "
        f"{args.seconds:g} s steady window "
        "(shared machine: load generator, fakes and gateway on the same cores)\n"
        f"{'workers':>7} {'failed':>6} {'refused':>7} {'gw CPU %':>8} {'%/call':>7} "
        f"{'ferret %':>8} "
        f"{'frames':>7} {'late %':>7} {'gap p50':>7} {'gap p99':>7} "
        f"{'reply p50':>9} {'reply p99':>9} {'callers %':>9}\n"
    )
    with contextlib.ExitStack() as stack:
        providers = provider_fakes(stack, env, work)
        for workers in (int(w) for w in args.workers.split(",")):
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            token = uuid.uuid4().hex
            data = work / f"data-{workers}"
            gateway_env = {
                **env,
                "PUBLIC_URL": base,
                "TWILIO_AUTH_TOKEN": token,
                "GATEWAY_API_KEY": API_KEY,
                "DATA_DIR": str(data),
                "LOG_LEVEL": "WARNING",
                **providers,
            }
            gateway_env.pop("MONGODB_URL", None)
            serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                     "--workers", str(workers)]  # fmt: skip
            log = work / f"gateway-{workers}.log"
            with _process(serve, base + "/health", gateway_env, log) as proc:
                r = run_load(
                    _run_level(
                        base,
                        token,
                        proc.pid,
                        workers,
                        args.calls,
                        args.seconds,
                        args.mode == "talking",
                        args.ramp_s,
                    )
                )
            sys.stdout.write(
                f"{workers:>7} {r['failed']:>6.0f} {r['refused']:>7.0f} {r['cpu_pct']:>8.1f} "
                f"{r['cpu_per_call']:>7.2f} {r['ferretdb_pct']:>8.1f} {r['frames']:>7.0f} "
                f"{r['late_pct']:>7.3f} {r['gap_p50']:>7.1f} {r['gap_p99']:>7.1f} "
                f"{r['reply_p50']:>9.0f} {r['reply_p99']:>9.0f} {r['load_pct']:>9.1f}\n"
            )
            sys.stdout.flush()
    sys.stdout.write(f"logs in {work}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
