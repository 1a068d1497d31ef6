"""Inputs that take more than their share, against one real gateway process: lying media
timestamps, floods, oversized and deeply nested bodies, huge metadata, a slowloris and
idle sockets. Each test prints the gateway's RSS and CPU time before and after."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from audio.stereo import read_wav
from gateway.demo.simulated_twilio import SimulatedTwilioCall
from storage import Database, Direction, NewCall, RecordTooLarge
from telephony.twilio import TwilioSignatureValidator
from tests.s3_server import S3Server

from .conftest import FakeServer, GatewayProcess, run_gateway
from .test_recorded_calls import new_bucket, recording_env

pytestmark = pytest.mark.timeout(240)

TWILIO_ACCOUNT = "AC" + "7" * 32
START_TIMEOUT_S = 3
HEADER_TIMEOUT_S = 3


@dataclass(frozen=True)
class Usage:
    rss_kb: int
    cpu_s: float


def usage(pid: int) -> Usage:
    """The process's resident memory (VmRSS) and CPU time (utime + stime)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return Usage(rss, ticks / 100)


def report(what: str, before: Usage, after: Usage) -> None:
    print(
        f"\n[{what}] RSS {before.rss_kb / 1024:.1f} -> {after.rss_kb / 1024:.1f} MiB, "
        f"CPU {before.cpu_s:.2f} -> {after.cpu_s:.2f} s (+{after.cpu_s - before.cpu_s:.2f})"
    )


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server)


@pytest.fixture(scope="module")
def gateway(
    mongo_url: str,
    s3_server: S3Server,
    bucket: str,
    twilio_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        **recording_env(s3_server, bucket),
        "RECORDING_PART_BYTES": str(1024 * 1024),
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "STREAM_START_TIMEOUT_S": str(START_TIMEOUT_S),
        "HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("bounds"), env) as process:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=process.auth_token)
        yield process


def _call(gateway: GatewayProcess) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )


def _media(call: SimulatedTwilioCall, payload: bytes, timestamp_ms: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": "9999",
            "streamSid": call.stream_sid,
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


async def _stored(http: httpx.AsyncClient, gateway: GatewayProcess, call_id: str) -> Any:
    response = await http.get(f"/calls/{call_id}", headers={"x-api-key": gateway.api_key})
    assert response.status_code == 200, response.text
    return response.json()


async def _wait_recording(http: httpx.AsyncClient, gateway: GatewayProcess, call_id: str) -> Any:
    for _ in range(1800):
        stored = await _stored(http, gateway, call_id)
        recording = stored.get("recording")
        if stored["status"] not in ("ringing", "in-progress") and recording is not None:
            if recording["status"] != "recording":
                return stored
        await asyncio.sleep(0.1)
    raise AssertionError(f"the recording of {call_id} never finished")


async def test_lying_timestamp_closes_1008_and_recording_follows_the_real_clock(
    gateway: GatewayProcess, s3_server: S3Server, bucket: str
) -> None:
    before = usage(gateway.pid)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        began = time.monotonic()
        try:
            await call.wait_agent_audio(within_s=15)
            assert call._ws is not None
            # One frame stamped 30 minutes into a call a few seconds old.
            await call._ws.send(_media(call, b"\xff" * 160, 30 * 60 * 1000))
            try:
                await call.wait_closed(within_s=10)
            except TimeoutError:  # still open: hang up, and wait for what the lie cost
                with contextlib.suppress(TimeoutError):
                    await call.stop()
                await call.wait_closed(within_s=180)
        finally:
            await call.aclose()
        wall_s = time.monotonic() - began
        assert call.call_id is not None
        stored = await _wait_recording(http, gateway, call.call_id)
    after = usage(gateway.pid)
    report("lying timestamp", before, after)
    key = stored["recording"]["key"]
    data = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    wav, samples = read_wav(data)
    recorded_s = samples.shape[0] / wav.rate
    print(f"recording: {len(data)} bytes, {recorded_s:.1f} s for {wall_s:.1f} s of wall time")
    assert call.log.close_code == 1008, (call.log.close_code, call.log.close_reason)
    assert "time" in call.log.close_reason
    assert recorded_s <= wall_s + 2.0
    assert stored["status"] == "failed" and stored["end_reason"] == "protocol-error"


async def test_oversized_media_payload_closes_1008(gateway: GatewayProcess) -> None:
    before = usage(gateway.pid)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            assert call._ws is not None
            big = b"\xff" * 40_000  # 5 s of audio in one message, under the message cap
            with_ts = int((time.monotonic() - (call.log.mic_started_at or 0)) * 1000)
            for _ in range(300):
                try:
                    await call._ws.send(_media(call, big, with_ts))
                except websockets.ConnectionClosed:
                    break
            with contextlib.suppress(TimeoutError):  # the assertion below says what happened
                await call.wait_closed(within_s=30)
        finally:
            await call.aclose()
    after = usage(gateway.pid)
    report("300 x 40 KB media payloads", before, after)
    assert call.log.close_code == 1008, (call.log.close_code, call.log.close_reason)
    assert "frame" in call.log.close_reason


async def test_media_faster_than_real_time_closes_1008(gateway: GatewayProcess) -> None:
    before = usage(gateway.pid)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            assert call._ws is not None and call.log.mic_started_at is not None
            ts = int((time.monotonic() - call.log.mic_started_at) * 1000)
            # 120 s of audio as fast as the socket takes it, stamped at the present.
            for _ in range(6000):
                try:
                    await call._ws.send(_media(call, b"\xff" * 160, ts))
                except websockets.ConnectionClosed:
                    break
            with contextlib.suppress(TimeoutError):  # the assertion below says what happened
                await call.wait_closed(within_s=30)
        finally:
            await call.aclose()
    after = usage(gateway.pid)
    report("media flood (6000 frames at once)", before, after)
    assert call.log.close_code == 1008, (call.log.close_code, call.log.close_reason)
    assert "real time" in call.log.close_reason


async def test_unknown_events_are_counted_and_logged_once_per_type(
    gateway: GatewayProcess,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        metrics_before = (await http.get("/metrics")).text
        log_before = gateway.log_text().count("unknown media stream event")
        call = _call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            assert call._ws is not None
            for n in range(2000):
                await call._ws.send(json.dumps({"event": f"bogus-{n % 2}", "x": "y" * 500}))
            await call.stop()
        finally:
            await call.aclose()
        metrics_after = (await http.get("/metrics")).text
    logged = gateway.log_text().count("unknown media stream event") - log_before
    print(f"unknown events: {logged} log lines for 2000 events")
    assert logged == 2
    counted = _metric(metrics_after, "unknown_events_total") - _metric(
        metrics_before, "unknown_events_total"
    )
    assert counted == 2000


def _metric(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(f"voice_gateway_{name} "):
            return int(line.split()[1])
    return 0


def _raw_request(gateway: GatewayProcess, head: bytes, body: bytes = b"") -> socket.socket:
    """A socket that sent `head` and `body` (or as much as the server took before answering)."""
    port = int(gateway.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        sock.sendall(head + body)
    return sock


def _status_of(sock: socket.socket) -> int:
    """The status of the answer; 0 when none came within the socket's timeout."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        return 0
    return int(data.split(b" ", 2)[1]) if data else 0


def test_oversized_bodies_are_refused_before_parsing(gateway: GatewayProcess) -> None:
    before = usage(gateway.pid)
    # A declared 10 MB form to a Twilio route: refused on its Content-Length.
    signature = "A" * 27 + "="
    head = (
        b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"X-Twilio-Signature: " + signature.encode() + b"\r\n"
        b"Content-Length: 10000000\r\n\r\n"
    )
    with _raw_request(gateway, head, b"CallSid=CA1&" + b"x" * 60_000) as sock:
        declared = _status_of(sock)
    # A chunked JSON body over 1 MiB to an API route: counted as it streams.
    chunk = b"[" + b'"x",' * 40_000 + b'"x"]'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    head = (
        b"POST /assistants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Api-Key: " + gateway.api_key.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with _raw_request(gateway, head, chunked) as sock:
        streamed = _status_of(sock)
    after = usage(gateway.pid)
    report("10 MB form + 1.6 MB chunked JSON", before, after)
    print(f"declared 10 MB form: {declared}, chunked 1.6 MB JSON: {streamed}")
    assert declared == 413
    assert streamed == 413


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "well-formed-signature"])
def test_multipart_upload_is_refused_without_reading_it(
    gateway: GatewayProcess, signed: bool
) -> None:
    """30 MB of multipart, chunked: the answer comes after the first 64 KiB, the rest is
    never needed (before, the gateway spooled it all to a temporary file)."""
    before = usage(gateway.pid)
    signature = b"X-Twilio-Signature: " + b"A" * 27 + b"=\r\n" if signed else b""
    head = (
        b"POST /twilio/voice HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=zzz\r\n"
        + signature
        + b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b"--zzz\r\nContent-Disposition: form-data; name=f; filename=a\r\n\r\n"
    first = part + b"x" * (64 * 1024 - len(part))
    with _raw_request(gateway, head, b"%x\r\n%s\r\n" % (len(first), first)) as sock:
        status = _status_of(sock)
    after = usage(gateway.pid)
    report(f"multipart ({'signed' if signed else 'unsigned'})", before, after)
    print(f"multipart answered after its first 64 KiB: {status or 'nothing'}")
    assert status == (415 if signed else 403)


async def test_huge_metadata_is_refused_naming_the_field_and_nothing_is_stored(
    gateway: GatewayProcess,
) -> None:
    headers = {"x-api-key": gateway.api_key}
    template = "Details: {{a}} {{a}} {{a}} {{a}} {{a}} {{a}} {{a}} {{a}} " * 300  # ~21 KB
    before = usage(gateway.pid)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        created = await http.post(
            "/assistants",
            json={"name": "Multiplier", "system_prompt": template, "greeting": "Hi."},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        claimed = await http.post("/numbers", json={"number": "+15557770001"}, headers=headers)
        assert claimed.status_code in (200, 201), claimed.text
        listed_before = (await http.get("/calls", params={"limit": 500}, headers=headers)).json()
        answers = []
        for size in (3_500, 60_000):  # multiplied by the template; over the cap by itself
            body = {
                "assistant_id": created.json()["id"],
                "to_number": "+15558880002",
                "from_number": "+15557770001",
                "metadata": {"a": "m" * size},
            }
            answers.append(await http.post("/call/outbound", json=body, headers=headers))
        listed_after = (await http.get("/calls", params={"limit": 500}, headers=headers)).json()
    after = usage(gateway.pid)
    report("3.5 KB and 60 KB metadata x 2400 placeholders", before, after)
    for answered in answers:
        print(f"answered {answered.status_code}: {answered.text[:300]}")
    for answered in answers:
        assert answered.status_code == 422
        error = answered.json()["error"]
        assert error["details"][0]["loc"] == ["body", "metadata"]
        assert "metadata" in error["message"]
    assert len(listed_after["items"]) == len(listed_before["items"])


async def test_deeply_nested_json_is_a_422(gateway: GatewayProcess) -> None:
    headers = {"x-api-key": gateway.api_key, "content-type": "application/json"}
    before = usage(gateway.pid)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        deep_body = await http.post("/assistants", content=b"[" * 100_000, headers=headers)
        nested = {"name": "n", "system_prompt": "p", "x": {}}
        inner = nested["x"]
        for _ in range(60):
            assert isinstance(inner, dict)
            inner["x"] = {}
            inner = inner["x"]
        nested_body = await http.post("/assistants", json=nested, headers=headers)
        cursor = base64.urlsafe_b64encode(b"[" * 5_000).decode().rstrip("=")
        deep_cursor = await http.get("/calls", params={"cursor": cursor}, headers=headers)
    after = usage(gateway.pid)
    report("deep JSON body and cursor", before, after)
    answers = [deep_body.status_code, nested_body.status_code, deep_cursor.status_code]
    print(f"deep JSON answers: {answers}")
    assert answers == [422, 422, 422]
    for response in (deep_body, nested_body, deep_cursor):
        assert response.json()["error"]["code"] == "invalid_request"


async def test_slowloris_and_idle_sockets_are_closed_and_others_served(
    gateway: GatewayProcess,
) -> None:
    port = int(gateway.base_url.rsplit(":", 1)[1])
    before = usage(gateway.pid)

    async def slow_client() -> float | None:
        """Send a request head one header a second; return when the server hung up."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = time.monotonic()
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            for n in range(40):
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        return time.monotonic() - opened
                except TimeoutError:
                    pass
                writer.write(b"X-Slow-%d: 1\r\n" % n)
            return None
        except (ConnectionError, OSError):
            return time.monotonic() - opened
        finally:
            writer.close()

    url = gateway.base_url.replace("http", "ws") + "/twilio/stream"
    signature = TwilioSignatureValidator(gateway.auth_token).sign(url, {})

    async def idle_socket() -> tuple[int | None, float | None]:
        """Upgrade, never send `start`: the close code and when it came."""
        ws = await websockets.connect(url, additional_headers={"X-Twilio-Signature": signature})
        opened = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), 40)
        except websockets.ConnectionClosed:
            return ws.close_code, time.monotonic() - opened
        except TimeoutError:
            return None, None
        finally:
            await ws.close()
        return None, None

    async def normal_call(http: httpx.AsyncClient) -> Any:
        """A call placed while the abuse goes on: greeted, then hung up as usual."""
        call = _call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=30)
            await call.wait_agent_silent()
            await call.stop()
        finally:
            await call.aclose()
        assert call.call_id is not None
        return await _stored(http, gateway, call.call_id)

    slow = [asyncio.create_task(slow_client()) for _ in range(200)]
    idle = [asyncio.create_task(idle_socket()) for _ in range(200)]
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        served = (await http.get("/health")).status_code
        stored = await normal_call(http)
    slow_closed = await asyncio.gather(*slow)
    idle_closed = await asyncio.gather(*idle)
    after = usage(gateway.pid)
    report("200 slowloris + 200 idle sockets + 1 call", before, after)
    still_slow = sum(1 for t in slow_closed if t is None)
    still_idle = sum(1 for code, _ in idle_closed if code is None)
    print(f"after 40 s: {still_slow} slowloris and {still_idle} idle sockets still open")
    slow_times = [t for t in slow_closed if t is not None]
    idle_times = [t for _, t in idle_closed if t is not None]
    if slow_times and idle_times:
        print(f"closed after at most {max(slow_times):.1f} s / {max(idle_times):.1f} s")
    assert served == 200
    assert (stored["status"], stored["end_reason"]) == ("completed", "caller-hung-up")
    assert still_slow == 0
    assert still_idle == 0
    assert {code for code, _ in idle_closed} == {1008}
    assert max(t for t in slow_closed if t is not None) < 30
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        assert (await http.get("/health")).status_code == 200


async def test_a_document_too_large_for_the_store_is_a_storage_error(database: Database) -> None:
    huge = "x" * (17 * 1024 * 1024)
    with pytest.raises(RecordTooLarge):
        await database.calls.create_call(
            NewCall(
                org_id=None,
                transport="twilio",
                call_sid="CA" + uuid.uuid4().hex,
                from_number="+15550001111",
                to_number="+15550002222",
                direction=Direction.INBOUND,
                system_prompt=huge,
            ),
            started_at=datetime.now(UTC),
        )
