"""Room calls: N SIP callers in N LiveKit rooms against one gateway (`--workers` processes).

Starts a real livekit-server (with Redis) whose webhooks reach `voice-gateway serve
--workers W` (embedded FerretDB; the provider fakes, or `--providers local`). For N in a
rising series, N test participants of kind SIP join their own rooms at once, then keep
asking questions for `--call-seconds`. Reports per N: time from the caller's joining to the
greeting's first audio (the caller's own connection and publish, webhook, the agent's join,
subscriptions, first TTS audio; p50 / p95 / max) and from the caller's connection being up
(LiveKit then sends the `participant_joined` webhook the gateway answers; a real SIP bridge's
participant is in the room then) to the greeting, time from the end
of each question to the answer's first audio at the caller (includes the end-of-turn
silence), the agent frames the gateway published and how often its audio source ran dry mid-
speech (summed over the workers: each worker's `/metrics` is read on a connection whose
`/health` named it), the rooms each worker served, and the gateway's CPU per call (its
worker processes; the supervisor and FerretDB apart). A caller hung up before it was
greeted counts as refused (the gateway was full: `MAX_LIVE_CALLS`, `LIVEKIT_CALL_WEIGHT`),
any other call that did not go through as failed.

    python bench/livekit_rooms_bench.py [--levels 1,4,8] [--call-seconds 20] [--workers 1]
        [--providers fakes|local]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sip_callers import (  # noqa: E402
    GoCallers,
    GoRoomCaller,
    build_sip_caller,
    opus_packets,
    write_clip,
)
from workers_bench import _wait_up, provider_fakes  # noqa: E402

from tests.livekit_caller import RoomCaller, caller_token, espeak_pcm16k  # noqa: E402
from tests.livekit_server import LiveKitServer, run_livekit_server  # noqa: E402
from tests.net import free_port  # noqa: E402

# Audio per SDK round trip of the test callers (capture and listen): all N callers run in
# this process on the cores the gateway is measured on; at 20 ms they took half a core at 8
# rooms (a real SIP bridge is a process of its own, usually on another machine).
CALLER_FRAME_MS = int(os.environ.get("BENCH_CALLER_FRAME_MS", "40"))
# The callers join with a peer connection per direction, as LiveKit's SIP bridge does
# (tests/livekit_caller.py); BENCH_CALLER_SINGLE_PC=1 gives them one for both (the Python
# SDK's default), as this bench's callers had until 2026-12-02.
CALLER_SINGLE_PC = os.environ.get("BENCH_CALLER_SINGLE_PC", "") == "1"
# With BENCH_KEEP_DIR, each call's caller-side moments go to rooms.jsonl there.
TIMELINE = (
    Path(os.environ["BENCH_KEEP_DIR"]) / "rooms.jsonl" if os.environ.get("BENCH_KEEP_DIR") else None
)

LINES = ("What are your opening hours?", "How much does it cost?", "Where are you located?")


class _Refused(Exception):
    """The gateway hung the caller up before it greeted it: the call was refused (full)."""


Caller = RoomCaller | GoRoomCaller


async def _greeted(caller: Caller) -> float:
    """When the agent's first audio reached `caller`; `_Refused` if the room closed first."""
    heard = asyncio.ensure_future(caller.wait_agent_audio(within_s=60))
    left = asyncio.ensure_future(caller.left.wait())
    done, _ = await asyncio.wait({heard, left}, return_when=asyncio.FIRST_COMPLETED)
    if heard in done:
        left.cancel()
        return heard.result()
    heard.cancel()
    raise _Refused


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gateway_pids(pid: int, workers: int) -> list[int]:
    """The processes that serve calls: `pid` itself under one worker, else its workers."""
    if workers == 1:
        return [pid]
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"gateway.worker" in cmdline:
                found.append(int(child))
    return found


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _live_workers(base: str) -> int:
    """How many workers the gateway's combined /metrics says are live (0 if it says not)."""
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
    except httpx.TransportError:
        return 0
    return int(_counters(text).get("voice_gateway_workers", 0))


async def _per_worker(base: str, workers: int) -> dict[int, dict[str, float]]:
    """Each worker's counters: new connections until every worker has answered one."""
    seen: dict[int, dict[str, float]] = {}
    deadline = time.monotonic() + 30
    while len(seen) < workers and time.monotonic() < deadline:
        async with httpx.AsyncClient(base_url=base) as http:
            worker = (await http.get("/health")).json().get("worker", 0)
            if worker not in seen:
                seen[worker] = _counters((await http.get("/metrics")).text)
                if "voice_gateway_workers" in seen[worker]:
                    # A gateway whose /metrics sums its workers (gateway/worker_metrics.py):
                    # one scrape is the whole gateway's (rooms per worker: their total),
                    # under one key whichever worker answered it.
                    return {-1: seen[worker]}
    return seen


def _counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


async def _one_call(
    server: LiveKitServer, speech: list[object], seconds: float, go: GoCallers | None
) -> tuple[float, float, list[float]]:
    """(join → greeting ms, connected → greeting ms, end of question → answer ms each).
    `speech`: the questions (PCM for the Python callers, clip numbers for `go`'s)."""
    room = "call-" + uuid.uuid4().hex[:8]
    attributes = {"sip.phoneNumber": "+15550001111", "sip.callID": "SCL_" + room}
    caller: Caller = (
        go.caller()
        if go is not None
        else RoomCaller(frame_ms=CALLER_FRAME_MS, single_peer_connection=CALLER_SINGLE_PC)
    )
    joined = time.monotonic()
    await caller.join(
        server.url.replace("http://", "ws://"),
        caller_token(server.api_key, server.api_secret, room, "sip_bench", attributes),
    )
    answers: list[float] = []
    try:
        heard = await _greeted(caller)
        assert caller.connected_at is not None
        greeting, after_connect = heard - joined, heard - caller.connected_at
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            await caller.wait_agent_silent(quiet_s=0.5, within_s=60)
            caller.say(speech[i % len(speech)])  # type: ignore[arg-type]
            i += 1
            await caller.wait_said()
            said_at = time.monotonic()
            answers.append((await caller.wait_agent_audio(within_s=30)) - said_at)
        await caller.wait_agent_silent(quiet_s=0.3, within_s=60)
    finally:
        await caller.leave()
    if TIMELINE is not None:  # wall-clock times, beside the gateway's `room call answered`
        wall = time.time() - time.monotonic()
        moments = {"joined": joined, "connected": caller.connected_at, "heard": heard}
        line = {"room": room, **{k: round(v + wall, 3) for k, v in moments.items() if v}}
        with TIMELINE.open("a") as out:
            out.write(json.dumps(line) + "\n")
    return greeting * 1000, after_connect * 1000, [a * 1000 for a in answers]


async def _level(
    server: LiveKitServer,
    base: str,
    pids: list[int],
    workers: int,
    n: int,
    seconds: float,
    speech: list[object],
    go: GoCallers | None,
) -> str:
    if go is not None:
        await go.start()
    before = await _per_worker(base, workers)
    cpu0 = sum(_cpu_s(pid) for pid in pids)
    results = await asyncio.gather(
        *(_one_call(server, speech, seconds, go) for _ in range(n)), return_exceptions=True
    )
    cpu = sum(_cpu_s(pid) for pid in pids) - cpu0
    if go is not None:
        await go.aclose()
    await asyncio.sleep(1.0)
    after = await _per_worker(base, workers)

    def delta(name: str, worker: int) -> float:
        return after[worker][f"voice_gateway_{name}"] - before[worker][f"voice_gateway_{name}"]

    seen = sorted(set(before) & set(after))
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = sum(1 for r in results if isinstance(r, _Refused))
    for failure in (r for r in results if isinstance(r, BaseException)):
        if not isinstance(failure, _Refused):
            sys.stderr.write(f"a call failed: {failure!r}\n")
    if not ok:
        return f"| {n} | {n - refused} | {refused} | no call was greeted |"
    greetings = [g for g, _, _ in ok]
    connected = [c for _, c, _ in ok]
    answers = [a for _, _, group in ok for a in group]
    frames = sum(delta("outbound_frames_total", w) for w in seen)
    dry = sum(delta("outbound_underruns_total", w) for w in seen)
    spread = "+".join(f"{delta('calls_started_total', w):.0f}" for w in seen)
    return (
        f"| {n} | {n - len(ok) - refused} | {refused} | {statistics.median(greetings):.0f} / "
        f"{_percentile(greetings, 0.95):.0f} / {max(greetings):.0f} | "
        f"{statistics.median(connected):.0f} / {_percentile(connected, 0.95):.0f} | "
        f"{statistics.median(answers):.0f} / {_percentile(answers, 0.95):.0f} | {frames:.0f} | "
        f"{100 * dry / frames if frames else 0:.3f} % | {spread} | "
        f"{100 * cpu / (n * seconds):.1f} % |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--call-seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--providers",
        choices=("fakes", "local"),
        default="fakes",
        help="fakes: the Deepgram, OpenAI and Cartesia wire fakes of tests/fakes, each a "
        "local server answering at once (the Twilio benches' set-up); local: PocketSphinx, "
        "the scripted agent and espeak-ng in the gateway process",
    )
    parser.add_argument(
        "--callers",
        choices=("python", "go"),
        default="python",
        help="python: tests/livekit_caller.py, the Python SDK in this process; go: "
        "tools/sip-caller (server-sdk-go and pion, as LiveKit's SIP bridge), Opus made once",
    )
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    speech: list[object] = [espeak_pcm16k(line) for line in LINES]
    binary = build_sip_caller() if args.callers == "go" else None
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(os.environ.get("BENCH_KEEP_DIR") or tmp)
        work.mkdir(parents=True, exist_ok=True)
        clips = []
        if binary is not None:
            for i, pcm in enumerate(speech):
                clips.append(work / f"question-{i}.opus")
                write_clip(clips[-1], opus_packets(pcm))  # type: ignore[arg-type]
            speech = list(range(len(clips)))
        fakes_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        provider_env = {} if args.providers == "local" else provider_fakes(stack, fakes_env, work)
        with run_livekit_server(work, webhook_url=base + "/livekit/webhook") as server:
            env = {
                **os.environ,
                **provider_env,
                "PUBLIC_URL": base,
                "DATA_DIR": str(work / "data"),
                "LIVEKIT_URL": server.url,
                "LIVEKIT_API_KEY": server.api_key,
                "LIVEKIT_API_SECRET": server.api_secret,
                "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            }
            env.pop("MONGODB_URL", None)
            log = (work / "gateway.log").open("wb")
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                 "--workers", str(args.workers)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                _wait_up(base + "/health", gateway)
                # A worker serves once it is ready (the first one starts alone): until then
                # every room would go to the others.
                deadline = time.monotonic() + 60
                while args.workers > 1 and _live_workers(base) < args.workers:
                    if time.monotonic() > deadline:
                        sys.stderr.write("the workers did not become ready\n")
                        return 1
                    time.sleep(0.2)
                pids = _gateway_pids(gateway.pid, args.workers)
                sys.stdout.write(
                    f"workers {args.workers}, providers {args.providers}, "
                    f"callers {args.callers}\n"
                    "| rooms | failed | refused | join → greeting ms p50 / p95 / max | connected → "
                    "greeting ms p50 / p95 | end of question → answer ms p50 / p95 | agent "
                    "frames | source ran dry | rooms (all workers) | gateway CPU per call |\n"
                    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
                )
                for n in (int(x) for x in args.levels.split(",")):
                    go = (
                        GoCallers(binary, clips, work / "sip-caller.log")
                        if binary is not None
                        else None
                    )
                    row = asyncio.run(
                        _level(server, base, pids, args.workers, n, args.call_seconds, speech, go)
                    )
                    sys.stdout.write(row + "\n")
                    sys.stdout.flush()
            finally:
                gateway.terminate()
                gateway.wait(timeout=20)
                log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
