"""The gateway's own share of voice-to-voice latency with cloud providers that answer at once.

Starts the protocol-faithful Deepgram, OpenAI and Cartesia servers of tests/fakes (no
added latency) and `voice-gateway serve` configured with all three, then places
simulated Twilio calls that talk to the agent turn after turn. Per agent turn the gateway
stores the latency of each stage after the caller's end of speech; the end-of-turn
silence window (VAD_SILENCE_MS) is a deliberate wait, so the gateway's share is

    first frame out - silence window

which still includes the loopback round trips to the three instant servers (Finalize,
the chat request, the first TTS chunk): an upper bound of the gateway's own work.

    python bench/provider_latency_bench.py [--calls 4] [--turns 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

ROOT = Path(__file__).resolve().parent.parent
SILENCE_MS = 300

API_KEY = secrets.token_urlsafe(32)  # a key the gateway accepts (not a placeholder)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start")
        time.sleep(0.2)


@contextlib.contextmanager
def _process(args: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(url, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _fake(
    name: str, env: dict[str, str], log_dir: Path
) -> tuple[str, contextlib.AbstractContextManager[None]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", f"tests.fakes.{name}:app", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    return url, _process(args, url + "/", env, log_dir / f"{name}.log")


async def _one_call(base: str, token: str, speech: bytes, turns: int) -> str:
    call = SimulatedTwilioCall(base_url=base, public_url=base, auth_token=token)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        await call.start(http)
    try:
        await call.wait_agent_audio(within_s=30)
        await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        for _ in range(turns):
            call.say(speech)
            await call.wait_said()
            await call.wait_agent_audio(within_s=30)
            await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        await call.stop()
    finally:
        await call.aclose()
    return str(call.call_id)


async def _run(base: str, token: str, calls: int, turns: int) -> list[dict[str, float]]:
    speech = espeak_mulaw("What are your opening hours?")
    ids = await asyncio.gather(*(_one_call(base, token, speech, turns) for _ in range(calls)))
    out: list[dict[str, float]] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for call_id in ids:
            stored = (await http.get(f"/calls/{call_id}", headers={"x-api-key": API_KEY})).json()
            out += [t["latency"] for t in stored["transcript"] if t.get("latency")]
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fake_provider_env(deepgram_url: str, openai_url: str, cartesia_url: str) -> dict[str, str]:
    """The gateway's settings for the three local provider servers."""
    return {
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "DEEPGRAM_BASE_URL": deepgram_url.replace("http://", "ws://"),
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_url + "/v1",
        "CARTESIA_API_KEY": "test-cartesia-key",
        "CARTESIA_BASE_URL": cartesia_url,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="vg-latency-"))
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
        "VAD_SILENCE_MS": str(SILENCE_MS),
        # A fixed silence window, so that the gateway share is first frame out minus it.
        "TURN_VAD": "energy",
        "TURN_END_OF_TURN": "silence",
        **fake_provider_env(dg_url, oa_url, ct_url),
    }
    gateway_env.pop("MONGODB_URL", None)
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    with dg, oa, ct, _process(serve, base + "/health", gateway_env, data_dir / "gateway.log"):
        # Short replies: 5 ms of audio per character keeps 200 turns quick.
        httpx.post(ct_url + "/control", json={"ms_per_char": 5}).raise_for_status()
        turns = asyncio.run(_run(base, token, args.calls, args.turns))
    if not turns:
        sys.stderr.write("no turns measured; see " + str(data_dir) + "\n")
        return 1
    sys.stdout.write(
        f"{len(turns)} agent turns, {args.calls} concurrent calls, silence window {SILENCE_MS} ms\n"
    )
    sys.stdout.write(f"{'stage (ms after end of speech)':<34} {'p50':>7} {'p99':>7}\n")
    for stage in ("stt_final", "llm_first_token", "tts_first_byte", "first_frame_out"):
        values = [t[stage] for t in turns if stage in t]
        sys.stdout.write(f"{stage:<34} {_pct(values, 0.5):>7.1f} {_pct(values, 0.99):>7.1f}\n")
    share = [t["first_frame_out"] - SILENCE_MS for t in turns if "first_frame_out" in t]
    after_final = [t["first_frame_out"] - t["stt_final"] for t in turns if "first_frame_out" in t]
    sys.stdout.write(
        f"{'gateway share (out - silence)':<34} {statistics.median(share):>7.1f} "
        f"{_pct(share, 0.99):>7.1f}\n"
        f"{'  of which final -> first frame':<34} {statistics.median(after_final):>7.1f} "
        f"{_pct(after_final, 0.99):>7.1f}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
