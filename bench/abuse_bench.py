"""Abuse bench: what one gateway process pays for a normal call, and for each input the
hardening issue found taking more than its share.

Starts `voice-gateway serve` (embedded FerretDB, local providers, moto's S3 server for
recordings, the local Twilio REST server for outbound calls) and runs each scenario in turn
against it. Per scenario it prints the gateway's CPU seconds spent, its RSS before, at peak
(sampled every 50 ms) and after, what the abuser was answered, and whether `/health` kept
answering meanwhile (the share of probes answered within 2 s).

    python bench/abuse_bench.py [--only NAME,...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from twilio.request_validator import RequestValidator

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.net import free_port
from tests.s3_server import run_s3_server

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
FRAME = b"\xff" * 160  # 20 ms of mu-law silence
ACCOUNT_SID = "AC" + "0" * 32


def _rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


@dataclass
class Gateway:
    base: str
    pid: int
    auth_token: str
    api_key: str
    log: Path

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}

    def sign(self, url: str, form: dict[str, str]) -> str:
        return str(RequestValidator(self.auth_token).compute_signature(url, form))


@dataclass
class Outcome:
    name: str
    answer: str
    cpu_s: float = 0.0
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    health_ok: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


class _Sampler:
    """RSS peak of a process, sampled every 50 ms on a thread (the event loop may be busy)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, _rss_kib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, _rss_kib(self.pid))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _probe_health(gw: Gateway, stop: asyncio.Event, results: list[bool]) -> None:
    async with httpx.AsyncClient(base_url=gw.base, timeout=2.0) as http:
        while not stop.is_set():
            try:
                results.append((await http.get("/health")).status_code == 200)
            except httpx.HTTPError:
                results.append(False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


async def _measure(
    gw: Gateway, name: str, scenario: Callable[[Gateway], Awaitable[tuple[str, dict[str, Any]]]]
) -> Outcome:
    await asyncio.sleep(1.0)  # let the previous scenario's clean-up settle
    rss_before, cpu_before = _rss_kib(gw.pid), _cpu_s(gw.pid)
    stop, probes = asyncio.Event(), list[bool]()
    prober = asyncio.create_task(_probe_health(gw, stop, probes))
    with _Sampler(gw.pid) as sampler:
        try:
            answer, extra = await scenario(gw)
        except (
            OSError,
            RuntimeError,
            ValueError,
            KeyError,
            httpx.HTTPError,
            websockets.WebSocketException,
        ) as exc:  # the scenario's failure is its outcome
            answer, extra = f"error: {type(exc).__name__}: {str(exc)[:80]}", {}
        await asyncio.sleep(1.0)
    stop.set()
    await prober
    return Outcome(
        name=name,
        answer=answer,
        cpu_s=_cpu_s(gw.pid) - cpu_before,
        rss_before=rss_before,
        rss_peak=sampler.peak,
        rss_after=_rss_kib(gw.pid),
        health_ok=sum(probes) / len(probes) if probes else 0.0,
        extra=extra,
    )


# ------------------------------------------------------------------- helpers


async def _open_stream(
    gw: Gateway, *, start: bool = True
) -> tuple[SimulatedTwilioCall, websockets.ClientConnection]:
    """Answer a call with the signed voice webhook and open its stream by hand."""
    call = SimulatedTwilioCall(base_url=gw.base, public_url=gw.base, auth_token=gw.auth_token)
    async with httpx.AsyncClient(base_url=gw.base, timeout=30) as http:
        url, params = await call.answer(http)
    local = url.replace("http", "ws", 1) if url.startswith("http") else url
    ws = await websockets.connect(
        local, additional_headers={"X-Twilio-Signature": gw.sign(url, {})}, max_size=2**20
    )
    if start:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        start_body = {
            "accountSid": call.account_sid,
            "streamSid": call.stream_sid,
            "callSid": call.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": params,
        }
        await ws.send(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "start": start_body,
                    "streamSid": call.stream_sid,
                }
            )
        )
    return call, ws


def _media(call: SimulatedTwilioCall, seq: int, timestamp_ms: int, payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": call.stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(seq),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


async def _closed_with(ws: websockets.ClientConnection, within_s: float) -> str:
    """How the gateway ended the socket (or that it was still open after `within_s`)."""
    try:
        async with asyncio.timeout(within_s):
            async for _ in ws:
                pass
    except TimeoutError:
        return "still open"
    except websockets.ConnectionClosed:
        pass
    return f"closed {ws.close_code} {ws.close_reason!r}"


async def _stored_call(gw: Gateway, call_id: str | None, within_s: float = 60) -> dict[str, Any]:
    """The stored call once it is finished (or as it is after `within_s`)."""
    body: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=gw.base, timeout=10) as http:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            response = await http.get(f"/calls/{call_id}", headers=gw.headers())
            body = response.json() if response.status_code == 200 else {}
            if body.get("ended_at") and (body.get("recording") or {}).get("status") != "recording":
                break
            await asyncio.sleep(0.5)
    return body


# ----------------------------------------------------------------- scenarios


async def normal_call(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """One call with two exchanges: the yardstick."""
    speech = espeak_mulaw("What are your opening hours?")
    call = SimulatedTwilioCall(base_url=gw.base, public_url=gw.base, auth_token=gw.auth_token)
    async with httpx.AsyncClient(base_url=gw.base, timeout=30) as http:
        await call.start(http)
    try:
        await call.wait_agent_audio(within_s=30)
        await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        for _ in range(2):
            call.say(speech)
            await call.wait_said()
            await call.wait_agent_audio(within_s=30)
            await call.wait_agent_silent(quiet_s=0.3, within_s=60)
        await call.stop()
    finally:
        await call.aclose()
    stored = await _stored_call(gw, call.call_id)
    size = (stored.get("recording") or {}).get("size_bytes")
    return f"{stored.get('status')}, {len(stored.get('transcript', []))} turns", {"wav": size}


async def lying_timestamps(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """A 2 s stream with one frame stamped 30 minutes in."""
    call, ws = await _open_stream(gw)
    try:
        for seq in range(100):
            stamp = 1_800_000 if seq == 50 else seq * 20
            await ws.send(_media(call, seq + 2, stamp, FRAME))
            await asyncio.sleep(0.02)
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"event": "stop", "streamSid": call.stream_sid}))
        answer = await _closed_with(ws, 30)
    finally:
        await ws.close()
    stored = await _stored_call(gw, call.call_id)
    return answer, {"wav": (stored.get("recording") or {}).get("size_bytes")}


async def _flood(gw: Gateway, payload: bytes, count: int) -> tuple[str, dict[str, Any]]:
    """`count` media messages carrying `payload`, as fast as the socket takes them."""
    call, ws = await _open_stream(gw)
    sent = 0
    try:
        for seq in range(count):
            await ws.send(_media(call, seq + 2, seq * 20, payload))
            sent += 1
        answer = await _closed_with(ws, 30)
    except websockets.ConnectionClosed:
        answer = f"closed {ws.close_code} {ws.close_reason!r}"
    finally:
        await ws.close()
    return f"{answer} after {sent} sent", {}


async def media_flood(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """300 media messages of 48 KB once base64-encoded."""
    return await _flood(gw, b"\x7f" * 36_000, 300)


async def frame_flood(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """6 000 well-formed 20 ms frames (two minutes of audio)."""
    return await _flood(gw, FRAME, 6_000)


async def unknown_events(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """10 000 events of a type Twilio never sends, on a started stream."""
    call, ws = await _open_stream(gw)
    log_before = gw.log.stat().st_size
    sent = 0
    try:
        for seq in range(10_000):
            await ws.send(json.dumps({"event": "nonsense", "sequenceNumber": str(seq + 2)}))
            sent += 1
        await ws.send(json.dumps({"event": "stop", "streamSid": call.stream_sid}))
        answer = await _closed_with(ws, 30)
    except websockets.ConnectionClosed:
        answer = f"closed {ws.close_code} {ws.close_reason!r}"
    finally:
        await ws.close()
    grew = gw.log.stat().st_size - log_before
    return f"{answer} after {sent} sent", {"log_kib": grew // 1024}


async def idle_sockets(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """200 signed upgrades that never send `start`; how many are open 30 s later."""
    url = gw.base.replace("http", "ws", 1) + "/twilio/stream"
    socks = []
    for _ in range(200):
        with contextlib.suppress(Exception):
            socks.append(
                await websockets.connect(
                    url, additional_headers={"X-Twilio-Signature": gw.sign(url, {})}
                )
            )
    opened = len(socks)
    await asyncio.sleep(30)
    still_open = sum(1 for ws in socks if ws.close_code is None)
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    return f"{opened} opened, {still_open} open after 30 s", {}


async def slowloris(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """200 connections sending a request's headers a byte every second for 30 s."""
    host, port = gw.base.removeprefix("http://").split(":")
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(200):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            conns.append((reader, writer))
    served_during: list[bool] = []
    async with httpx.AsyncClient(base_url=gw.base, timeout=5.0) as http:
        for second in range(30):
            for _, writer in conns:
                with contextlib.suppress(OSError):
                    writer.write(b"X-a: b\r\n")
                    await writer.drain()
            if second % 5 == 4:
                try:
                    served_during.append((await http.get("/health")).status_code == 200)
                except httpx.HTTPError:
                    served_during.append(False)
            await asyncio.sleep(1.0)
    held = 0
    for reader, writer in conns:
        try:  # a connection the gateway gave up on reads as closed (EOF or reset)
            await asyncio.wait_for(reader.read(1), 0.05)
        except TimeoutError:
            held += 1
        except OSError:
            pass
        writer.close()
    ok = sum(served_during)
    return (
        f"{len(conns)} opened, {held} held after 30 s; new requests {ok}/{len(served_during)}",
        {},
    )


async def unsigned_upload(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """A 30 MB multipart upload to the voice webhook with no signature: the head declares
    it, and the body is sent only as far as the gateway reads it."""
    host, port = gw.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    size = 30 * 1024 * 1024
    writer.write(
        b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
    )
    sent = 0
    chunk = b"\0" * 65536
    answer = asyncio.create_task(reader.readline())  # the gateway may answer before reading
    await asyncio.wait({answer}, timeout=2.0)  # answered on the head alone?
    try:
        async with asyncio.timeout(30):
            while sent < size and not answer.done():
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            status = (await answer).decode().strip()
    except (OSError, TimeoutError) as exc:
        status = f"{type(exc).__name__} after sending"
    finally:
        answer.cancel()
        writer.close()
    return f"{status or 'closed'} ({sent // 1024} KiB of the body sent)", {}


async def deep_json(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """An API body nested 100 000 deep."""
    body = "[" * 100_000 + "]" * 100_000
    async with httpx.AsyncClient(base_url=gw.base, timeout=60) as http:
        response = await http.post(
            "/assistants",
            content=body,
            headers={**gw.headers(), "content-type": "application/json"},
        )
    return f"HTTP {response.status_code}", {}


async def huge_metadata(gw: Gateway) -> tuple[str, dict[str, Any]]:
    """An outbound call whose 3.5 KB metadata fills a prompt of 3 500 placeholders."""
    async with httpx.AsyncClient(base_url=gw.base, timeout=120, headers=gw.headers()) as http:
        assistant = await http.post(
            "/assistants",
            json={"name": "abuse", "system_prompt": "{{x}} " * 3_300, "recording": False},
        )
        if assistant.status_code >= 300:
            return f"assistant refused: HTTP {assistant.status_code}", {}
        from_number = "+15550003333"
        # Registered numbers (where the gateway asks for them): claim the caller id first.
        await http.post("/numbers", json={"number": from_number})
        response = await http.post(
            "/call/outbound",
            json={
                "assistant_id": assistant.json()["id"],
                "to_number": "+15550004444",
                "from_number": from_number,
                "metadata": {"x": "y" * 3_500},
            },
        )
    return f"HTTP {response.status_code}", {}


SCENARIOS: dict[str, Callable[[Gateway], Awaitable[tuple[str, dict[str, Any]]]]] = {
    "normal call": normal_call,
    "lying timestamps": lying_timestamps,
    "media flood": media_flood,
    "frame flood": frame_flood,
    "unknown events": unknown_events,
    "idle sockets": idle_sockets,
    "slowloris": slowloris,
    "unsigned upload": unsigned_upload,
    "deep json": deep_json,
    "huge metadata": huge_metadata,
}


# ------------------------------------------------------------------- the run


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[2]} did not start; see {log}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print(outcome: Outcome) -> None:
    mib = 1024
    extra = " ".join(f"{k}={v}" for k, v in outcome.extra.items())
    sys.stdout.write(
        f"{outcome.name:<17} {outcome.cpu_s:>6.2f} {outcome.rss_before / mib:>7.0f} "
        f"{outcome.rss_peak / mib:>7.0f} {outcome.rss_after / mib:>7.0f} "
        f"{100 * outcome.health_ok:>6.0f}%  {outcome.answer} {extra}\n"
    )
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)

    work = Path(tempfile.mkdtemp(prefix="vg-abuse-"))
    auth_token, api_key = secrets.token_hex(16), secrets.token_urlsafe(32)
    twilio_port, port = free_port(), free_port()
    twilio_url, base = f"http://127.0.0.1:{twilio_port}", f"http://127.0.0.1:{port}"
    common = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"}
    with run_s3_server(work, min_part_bytes=None) as s3:
        s3.client().create_bucket(Bucket="abuse")
        env = {
            **common,
            **{k: v for k, v in s3.env("abuse").items() if v is not None},
            "PUBLIC_URL": base,
            "TWILIO_AUTH_TOKEN": auth_token,
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_API_BASE_URL": twilio_url,
            "GATEWAY_API_KEY": api_key,
            "DATA_DIR": str(work / "data"),
            "LOG_LEVEL": "INFO",
        }
        fake_args = [sys.executable, "-m", "uvicorn", "tests.fakes.twilio_server:app",
                     "--port", str(twilio_port), "--log-level", "warning"]  # fmt: skip
        gw_args = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
        gw_log = work / "gateway.log"
        with (
            _process(fake_args, common, work / "twilio.log", twilio_url + "/"),
            _process(gw_args, env, gw_log, base + "/health") as pid,
        ):
            httpx.post(
                twilio_url + "/control",
                json={"account_sid": ACCOUNT_SID, "auth_token": auth_token},
            )
            gw = Gateway(base=base, pid=pid, auth_token=auth_token, api_key=api_key, log=gw_log)
            sys.stdout.write(
                f"{'scenario':<17} {'CPU s':>6} {'RSS MiB':>7} {'peak':>7} {'after':>7} "
                f"{'health':>7}  answer\n"
            )
            for name in chosen:
                _print(asyncio.run(_measure(gw, name, SCENARIOS[name])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
