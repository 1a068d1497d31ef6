"""Room calls: N SIP callers in N LiveKit rooms against one gateway process.

Starts a real livekit-server (with Redis) whose webhooks reach `voice-gateway serve`
(embedded FerretDB, local providers). For N in a rising series, N test participants of
kind SIP join their own rooms at once, then keep asking questions for `--call-seconds`.
Reports per N: time from joining to the greeting's first audio (webhook, join, subscribe,
first TTS audio), time from the end of each question to the answer's first audio at the
caller (includes the 600 ms end-of-turn silence), the agent frames the gateway published
and how often its audio source ran dry mid-speech, and the gateway's CPU per call.

    python bench/livekit_rooms_bench.py [--levels 1,4,8] [--call-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
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

from tests.livekit_caller import RoomCaller, caller_token, espeak_pcm16k  # noqa: E402
from tests.livekit_server import LiveKitServer, run_livekit_server  # noqa: E402
from tests.net import free_port  # noqa: E402

LINES = ("What are your opening hours?", "How much does it cost?", "Where are you located?")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counters(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


async def _one_call(
    server: LiveKitServer, speech: list[object], seconds: float
) -> tuple[float, list[float]]:
    room = "call-" + uuid.uuid4().hex[:8]
    attributes = {"sip.phoneNumber": "+15550001111", "sip.callID": "SCL_" + room}
    caller = RoomCaller()
    joined = time.monotonic()
    await caller.join(
        server.url.replace("http://", "ws://"),
        caller_token(server.api_key, server.api_secret, room, "sip_bench", attributes),
    )
    answers: list[float] = []
    try:
        greeting = await caller.wait_agent_audio(within_s=60) - joined
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
    return greeting * 1000, [a * 1000 for a in answers]


async def _level(
    server: LiveKitServer, base: str, pid: int, n: int, seconds: float, speech: list[object]
) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        before = _counters((await http.get("/metrics")).text)
        cpu0 = _cpu_s(pid)
        results = await asyncio.gather(
            *(_one_call(server, speech, seconds) for _ in range(n)), return_exceptions=True
        )
        cpu = _cpu_s(pid) - cpu0
        await asyncio.sleep(1.0)
        after = _counters((await http.get("/metrics")).text)
    ok = [r for r in results if not isinstance(r, BaseException)]
    greetings = [g for g, _ in ok]
    answers = [a for _, group in ok for a in group]
    frames = (
        after["voice_gateway_outbound_frames_total"] - before["voice_gateway_outbound_frames_total"]
    )
    dry = (
        after["voice_gateway_outbound_underruns_total"]
        - before["voice_gateway_outbound_underruns_total"]
    )
    return (
        f"| {n} | {n - len(ok)} | {statistics.median(greetings):.0f} / {max(greetings):.0f} | "
        f"{statistics.median(answers):.0f} / {max(answers):.0f} | {frames:.0f} | "
        f"{100 * dry / frames if frames else 0:.3f} % | {100 * cpu / (n * seconds):.1f} % |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--call-seconds", type=float, default=20.0)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    speech: list[object] = [espeak_pcm16k(line) for line in LINES]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_KEEP_DIR") or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with run_livekit_server(work, webhook_url=base + "/livekit/webhook") as server:
            env = {
                **os.environ,
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
                [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        httpx.get(base + "/health", timeout=1)
                        break
                    except httpx.TransportError:
                        if gateway.poll() is not None or time.monotonic() > deadline:
                            sys.stderr.write("the gateway did not start\n")
                            return 1
                        time.sleep(0.2)
                sys.stdout.write(
                    "| rooms | failed | join → greeting ms p50 / max | end of question → "
                    "answer ms p50 / max | agent frames | source ran dry | gateway CPU per call |\n"
                    "| --- | --- | --- | --- | --- | --- | --- |\n"
                )
                for n in (int(x) for x in args.levels.split(",")):
                    row = asyncio.run(
                        _level(server, base, gateway.pid, n, args.call_seconds, speech)
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
