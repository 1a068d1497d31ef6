"""Room calls recorded with LiveKit Egress, against a real livekit-server.

This machine has no egress worker, so the gateway's Twirp traffic goes through a tap: a
loopback proxy that forwards every byte to the real server (room WebSockets included) and
records each Egress exchange as it went over the wire. Without a worker the real server
answers StartRoomCompositeEgress itself; where a test needs an egress that started, the
tap answers Egress calls as a worker-backed server would (`stand_in`). The final state
comes from `egress_ended` webhooks signed as livekit-server signs them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api as lkapi

from gateway.livekit.egress import START_TIMEOUT_S
from gateway.livekit.room import ATTR_ASSISTANT, ATTR_ORG
from storage import CallRecord, Database, open_database
from tests.integration.conftest import GatewayProcess, run_gateway
from tests.livekit_caller import RoomCaller, caller_token, espeak_pcm16k
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.net import free_port
from tests.s3_server import S3Server

EGRESS_PATH = "/twirp/livekit.Egress/"
PREFIX = "calls/"

# ------------------------------------------------------------------- the tap


@dataclass
class Exchange:
    """One Egress Twirp request and, once it came, its answer."""

    method: str
    headers: dict[str, str]
    body: bytes
    sent_at: float
    status: int | None = None
    answer: bytes = b""
    answered_at: float | None = None


StandIn = Callable[[str, bytes], bytes]


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, str, dict[str, str], bytes]:
    """One HTTP/1.1 message: (its bytes as sent, start line, headers, decoded body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    start, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raw, body = bytearray(head), bytearray()
    if "content-length" in headers:
        data = await reader.readexactly(int(headers["content-length"]))
        raw += data
        body += data
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            raw += size_line + data
            body += data[:-2]
            if size == 0:
                break
    return bytes(raw), start, headers, bytes(body)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class _Pending:
    """A connection's requests awaiting their answers, in order (HTTP/1.1, no pipelining);
    None for those that are not recorded."""

    def __init__(self) -> None:
        self._queue: collections.deque[Exchange | None] = collections.deque()
        self.drained = asyncio.Event()
        self.drained.set()

    def push(self, exchange: Exchange | None) -> None:
        self._queue.append(exchange)
        self.drained.clear()

    def pop(self) -> Exchange | None:
        exchange = self._queue.popleft() if self._queue else None
        if not self._queue:
            self.drained.set()
        return exchange


class TwirpTap:
    """A loopback proxy in front of livekit-server, run on its own thread and loop."""

    def __init__(self, upstream_url: str) -> None:
        port = urlsplit(upstream_url).port
        assert port is not None
        self._upstream_port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        # The loop keeps only weak references to tasks, and asyncio's stream protocol drops
        # its reference to a connection's handler once the client hangs up: a handler still
        # waiting for the server's answer (the gateway gave up on a slow StartEgress) would be
        # garbage-collected mid-flight, and that answer never recorded. Held here instead.
        self._handlers: set[asyncio.Task[None]] = set()
        self.stand_in: StandIn | None = None
        self.url = ""

    def __enter__(self) -> TwirpTap:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def exchanges(self, method: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self._exchanges if e.method == method]

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            cwriter.close()
            return
        pending = _Pending()
        answers = asyncio.create_task(self._answers(ureader, cwriter, pending))
        try:
            await self._requests(creader, cwriter, uwriter, pending)
            # The client may have given up: an answer still due is awaited and recorded.
            drained = asyncio.create_task(pending.drained.wait())
            await asyncio.wait({answers, drained}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        finally:
            answers.cancel()
            await asyncio.gather(answers, return_exceptions=True)
            cwriter.close()
            uwriter.close()

    async def _requests(
        self,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        uwriter: asyncio.StreamWriter,
        pending: _Pending,
    ) -> None:
        while True:
            try:
                raw, start, headers, body = await _read_message(creader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            path = start.split(" ")[1]
            if "upgrade" in headers:  # a room's signalling WebSocket: bytes from here on
                uwriter.write(raw)
                await _pump(creader, uwriter)
                return
            exchange = None
            if path.startswith(EGRESS_PATH):
                exchange = Exchange(path.rsplit("/", 1)[1], headers, body, time.monotonic())
                with self._lock:
                    self._exchanges.append(exchange)
                stand_in = self.stand_in
                if stand_in is not None:
                    answer = stand_in(exchange.method, body)
                    cwriter.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/protobuf\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                    )
                    await cwriter.drain()
                    exchange.status, exchange.answer = 200, answer
                    exchange.answered_at = time.monotonic()
                    continue
            pending.push(exchange)
            uwriter.write(raw)
            await uwriter.drain()

    async def _answers(
        self,
        ureader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        pending: _Pending,
    ) -> None:
        while True:
            try:
                raw, start, _, body = await _read_message(ureader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            status = int(start.split(" ")[1])
            if status == 101:
                cwriter.write(raw)
                await _pump(ureader, cwriter)
                break
            exchange = pending.pop()
            if exchange is not None:
                exchange.status, exchange.answer = status, body
                exchange.answered_at = time.monotonic()
            with contextlib.suppress(ConnectionError):
                cwriter.write(raw)
                await cwriter.drain()
        cwriter.close()


# ------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class EgressStack:
    gateway: GatewayProcess
    server: LiveKitServer
    tap: TwirpTap
    s3: S3Server
    bucket: str
    mongo_url: str


@pytest.fixture(scope="module")
def egress_stack(
    mongo_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EgressStack]:
    """livekit-server (webhooks to the gateway), the tap before it, a gateway that records."""
    port = free_port()
    work = tmp_path_factory.mktemp("lk-egress")
    bucket = "rec-" + uuid.uuid4().hex[:12]
    s3_server.client().create_bucket(Bucket=bucket)
    webhook = f"http://127.0.0.1:{port}/livekit/webhook"
    with run_livekit_server(work, webhook_url=webhook) as server, TwirpTap(server.url) as tap:
        env: dict[str, str | None] = {
            "LIVEKIT_URL": tap.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "RECORDING_PREFIX": PREFIX,
            **s3_server.env(bucket),
        }
        with run_gateway(mongo_url, work, env, port=port) as gateway:
            yield EgressStack(gateway, server, tap, s3_server, bucket, mongo_url)


@pytest.fixture
async def store(egress_stack: EgressStack) -> AsyncIterator[Database]:
    """The gateway's own database, to read what it stored."""
    db = await open_database(egress_stack.mongo_url, egress_stack.gateway.db_name)
    try:
        yield db
    finally:
        await db.close()


# ------------------------------------------------------------------- helpers


def _sip_attributes(**extra: str) -> dict[str, str]:
    return {
        "sip.phoneNumber": "+15550003333",
        "sip.trunkPhoneNumber": "+15557778888",
        "sip.callID": "SCL_" + uuid.uuid4().hex[:8],
        **extra,
    }


async def _join(stack: EgressStack, room: str, attributes: dict[str, str]) -> RoomCaller:
    server = stack.server
    caller = RoomCaller()
    token = caller_token(server.api_key, server.api_secret, room, "sip_caller", attributes)
    await caller.join(server.url.replace("http://", "ws://"), token)
    return caller


async def _call_in(stack: EgressStack, db: Database, room: str) -> CallRecord:
    async with httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=10) as http:
        for _ in range(300):
            page = await http.get("/calls", headers={"x-api-key": stack.gateway.api_key})
            mine = [c for c in page.json()["items"] if c["metadata"].get("room") == room]
            if mine:
                return await db.calls.get_call(mine[0]["id"])
            await asyncio.sleep(0.1)
    raise AssertionError(f"no call stored for room {room}")


async def _until(
    read: Callable[[], Any], check: Callable[[Any], bool], within_s: float, what: str
) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = await read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: last {value!r}")
        await asyncio.sleep(0.1)


def _starts_for(tap: TwirpTap, room: str) -> list[Exchange]:
    return [
        e
        for e in tap.exchanges("StartRoomCompositeEgress")
        if lkapi.RoomCompositeEgressRequest.FromString(e.body).room_name == room
    ]


def _recording_grant(stack: EgressStack, exchange: Exchange) -> bool:
    token = exchange.headers["authorization"].removeprefix("Bearer ")
    claims = lkapi.TokenVerifier(stack.server.api_key, stack.server.api_secret).verify(token)
    return claims.video is not None and bool(claims.video.room_record)


async def _post_egress_ended(stack: EgressStack, info: lkapi.EgressInfo) -> httpx.Response:
    """POST `egress_ended` as livekit-server does: JSON body, JWT whose sha256 claim covers it."""
    event = lkapi.WebhookEvent(
        event="egress_ended",
        egress_info=info,
        id="EV_" + uuid.uuid4().hex[:12],
        created_at=int(time.time()),
    )
    body = MessageToJson(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    server = stack.server
    token = lkapi.AccessToken(server.api_key, server.api_secret).with_sha256(digest).to_jwt()
    async with httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=10) as http:
        return await http.post(
            "/livekit/webhook",
            content=body,
            headers={"Authorization": token, "Content-Type": "application/webhook+json"},
        )


# --------------------------------------------------------------------- tests


async def test_without_an_egress_worker_the_call_goes_on_and_the_recording_fails(
    egress_stack: EgressStack, store: Database
) -> None:
    stack, tap = egress_stack, egress_stack.tap
    tap.stand_in = None
    stops_before = len(tap.exchanges("StopEgress"))
    room = "call-" + uuid.uuid4().hex[:8]
    caller = await _join(stack, room, _sip_attributes())
    try:
        greeted_at = await caller.wait_agent_audio(within_s=30)
        call = await _call_in(stack, store, room)
        [start] = _starts_for(tap, room)

        # What went over the wire: an audio-only room composite, one OGG file on our S3.
        assert start.headers["content-type"] == "application/protobuf"
        assert _recording_grant(stack, start)
        request = lkapi.RoomCompositeEgressRequest.FromString(start.body)
        assert request.audio_only and not request.video_only
        [output] = request.file_outputs
        assert output.file_type == lkapi.EncodedFileType.OGG
        key = f"{PREFIX}{call.org_id or 'default'}/{call.id}.ogg"
        assert output.filepath == key
        assert output.s3 == lkapi.S3Upload(
            access_key=stack.s3.access_key_id,
            secret=stack.s3.secret_access_key,
            region=stack.s3.region,
            endpoint=stack.s3.endpoint_url,
            bucket=stack.bucket,
            force_path_style=True,
        )
        # The greeting did not wait for the egress: it played while the start was unanswered.
        assert start.answered_at is None or greeted_at < start.answered_at
        assert greeted_at - start.sent_at < START_TIMEOUT_S

        # The gateway gives up after START_TIMEOUT_S and says so on the call.
        failed = await _until(
            lambda: store.calls.get_call(call.id),
            lambda c: c.recording is not None,
            START_TIMEOUT_S + 10,
            "no recording state",
        )
        assert failed.recording.kind == "egress" and failed.recording.status == "failed"
        assert failed.recording.egress_id is None
        assert (failed.recording.bucket, failed.recording.key) == (stack.bucket, key)
        assert "did not start within" in failed.recording.error
        log = stack.gateway.log_text()
        assert any(
            "room recording did not start" in line and call.id in line for line in log.splitlines()
        )

        # ... and the call goes on: the agent still answers the caller.
        await caller.wait_agent_silent()
        caller.say(espeak_pcm16k("What are your opening hours?"))
        await caller.wait_said()
        await caller.wait_agent_audio(within_s=20)
    finally:
        await caller.leave()

    ended = await _until(
        lambda: store.calls.get_call(call.id), lambda c: c.ended_at is not None, 20, "not ended"
    )
    assert ended.status == "completed" and ended.end_reason == "caller-hung-up"
    assert len(tap.exchanges("StopEgress")) == stops_before  # nothing started, nothing stopped

    # What the real server answered, when it finally did (the tap waited for it).
    async def the_start() -> Exchange:
        return start

    await _until(the_start, lambda e: e.answered_at is not None, 40, "StartEgress unanswered")
    assert start.status == 503, (start.status, start.answer)
    assert b'"code":"unavailable"' in start.answer.replace(b" ", b"")
    assert b"no response from servers" in start.answer


def _worker(started: dict[str, str]) -> StandIn:
    """Answers Egress calls as livekit-server does when a worker takes the request."""

    def answer(method: str, body: bytes) -> bytes:
        if method == "StartRoomCompositeEgress":
            request = lkapi.RoomCompositeEgressRequest.FromString(body)
            egress_id = "EG_" + uuid.uuid4().hex[:12]
            started[request.room_name] = egress_id
            info = lkapi.EgressInfo(
                egress_id=egress_id,
                room_name=request.room_name,
                status=lkapi.EgressStatus.EGRESS_STARTING,
                room_composite=request,
            )
        elif method == "StopEgress":
            stop = lkapi.StopEgressRequest.FromString(body)
            info = lkapi.EgressInfo(
                egress_id=stop.egress_id, status=lkapi.EgressStatus.EGRESS_ENDING
            )
        else:
            raise AssertionError(f"unexpected Egress call {method}")
        return info.SerializeToString()

    return answer


async def test_egress_ids_are_kept_stopped_at_hang_up_and_completed_by_the_webhook(
    egress_stack: EgressStack, store: Database
) -> None:
    stack, tap = egress_stack, egress_stack.tap
    started: dict[str, str] = {}
    tap.stand_in = _worker(started)
    async with httpx.AsyncClient(base_url=stack.gateway.base_url, timeout=10) as http:
        number = _sip_attributes()["sip.trunkPhoneNumber"]  # the rule's trunk's number
        claimed = await http.post(
            "/numbers", headers={"x-api-key": stack.gateway.api_key}, json={"number": number}
        )
        assert claimed.status_code == 201, claimed.text
        quiet = await http.post(
            "/assistants",
            headers={"x-api-key": stack.gateway.api_key},
            json={"name": "Quiet", "system_prompt": "Help.", "greeting": "Hi.", "recording": False},
        )
    assert quiet.status_code == 201, quiet.text
    quiet_assistant = await store.assistants.get_any(quiet.json()["id"])
    assert quiet_assistant is not None
    rooms = {name: "call-" + uuid.uuid4().hex[:8] for name in ("ok", "fail", "off")}
    attributes = {
        "ok": _sip_attributes(),
        "fail": _sip_attributes(),
        "off": _sip_attributes(
            **{ATTR_ORG: quiet_assistant.org_id or "", ATTR_ASSISTANT: quiet_assistant.id}
        ),
    }
    callers = {name: await _join(stack, rooms[name], attributes[name]) for name in rooms}
    try:
        await asyncio.gather(*(c.wait_agent_audio(within_s=30) for c in callers.values()))
        calls = {name: await _call_in(stack, store, rooms[name]) for name in rooms}
        assert calls["off"].assistant_id == quiet_assistant.id
        for name in ("ok", "fail"):
            recording = await _until(
                lambda name=name: store.calls.get_call(calls[name].id),  # type: ignore[misc]
                lambda c: c.recording is not None,
                10,
                f"{name}: no recording state",
            )
            assert recording.recording.status == "recording"
            assert recording.recording.egress_id == started[rooms[name]]
            assert recording.recording.bucket == stack.bucket
            assert recording.recording.key == f"{PREFIX}{calls[name].org_id}/{calls[name].id}.ogg"
    finally:
        for caller in callers.values():
            await caller.leave()

    for call in calls.values():
        await _until(
            lambda call=call: store.calls.get_call(call.id),  # type: ignore[misc]
            lambda c: c.ended_at is not None,
            20,
            "not ended",
        )
    # The assistant that does not record was never recorded.
    assert rooms["off"] not in started and not _starts_for(tap, rooms["off"])
    assert (await store.calls.get_call(calls["off"].id)).recording is None

    # Hang-up stopped both egresses, with a token allowed to. The stop comes after the call
    # is stored as ended (the end's last steps), so it is waited for.
    async def stopped() -> set[str]:
        return {
            lkapi.StopEgressRequest.FromString(e.body).egress_id
            for e in tap.exchanges("StopEgress")
        }

    wanted = {started[rooms["ok"]], started[rooms["fail"]]}
    await _until(stopped, lambda stops: wanted <= stops, 20, "egresses not stopped")
    assert all(_recording_grant(stack, e) for e in tap.exchanges("StopEgress"))

    # LiveKit says where the file went.
    key = f"{PREFIX}{calls['ok'].org_id}/{calls['ok'].id}.ogg"
    location = f"{stack.s3.endpoint_url}/{stack.bucket}/{key}"
    complete = lkapi.EgressInfo(
        egress_id=started[rooms["ok"]],
        room_name=rooms["ok"],
        status=lkapi.EgressStatus.EGRESS_COMPLETE,
        file_results=[
            lkapi.FileInfo(filename=key, location=location, size=91_234, duration=7_500_000_000)
        ],
    )
    assert (await _post_egress_ended(stack, complete)).status_code == 200
    ok = (await store.calls.get_call(calls["ok"].id)).recording
    assert ok is not None
    assert (ok.kind, ok.status, ok.egress_id) == ("egress", "complete", started[rooms["ok"]])
    assert (ok.location, ok.size_bytes, ok.duration_s) == (location, 91_234, 7.5)
    assert (ok.bucket, ok.key, ok.error) == (stack.bucket, key, None)

    failed = lkapi.EgressInfo(
        egress_id=started[rooms["fail"]],
        room_name=rooms["fail"],
        status=lkapi.EgressStatus.EGRESS_FAILED,
        error="S3 upload failed: AccessDenied",
    )
    assert (await _post_egress_ended(stack, failed)).status_code == 200
    bad = (await store.calls.get_call(calls["fail"].id)).recording
    assert bad is not None
    assert (bad.status, bad.error, bad.location) == (
        "failed",
        "S3 upload failed: AccessDenied",
        None,
    )

    # An egress no call holds (another service's, or a call long gone): 200, logged.
    unknown = lkapi.EgressInfo(egress_id="EG_notours", status=lkapi.EgressStatus.EGRESS_COMPLETE)
    assert (await _post_egress_ended(stack, unknown)).status_code == 200
    assert any(
        "egress ended for no known call" in line and "EG_notours" in line
        for line in stack.gateway.log_text().splitlines()
    )
    assert (await store.calls.get_call(calls["ok"].id)).recording == ok
