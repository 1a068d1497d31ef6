"""LiveKit webhooks replayed against two gateways on one database and a real livekit-server:
a captured, correctly signed `participant_joined` sent again (to the other gateway while
the call is live, and to its own gateway) is answered 200 and acted on once; an oversized
body is refused before it is read whole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from livekit import api as lkapi

from tests.livekit_server import LiveKitServer, run_livekit_server, signed_webhook
from tests.net import free_port

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class _Stack:
    server: LiveKitServer
    a: GatewayProcess  # livekit-server's webhooks go here
    b: GatewayProcess  # the same database, as behind a balancer

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.a.api_key}


@pytest.fixture(scope="module")
def stack(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    port = free_port()
    work = tmp_path_factory.mktemp("lk-replay")
    with run_livekit_server(work, webhook_url=f"http://127.0.0.1:{port}/livekit/webhook") as server:
        env: dict[str, str | None] = {
            "MONGODB_DB": "lk_replay_" + uuid.uuid4().hex[:8],
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
        }
        with run_gateway(mongo_url, work, env, port=port) as a:
            shared = {**env, "TWILIO_AUTH_TOKEN": a.auth_token, "GATEWAY_API_KEY": a.api_key}
            with run_gateway(mongo_url, tmp_path_factory.mktemp("lk-replay-b"), shared) as b:
                yield _Stack(server, a, b)


async def _post(gateway: GatewayProcess, body: bytes, auth: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as http:
        return await http.post(
            gateway.base_url + "/livekit/webhook",
            content=body,
            headers={"Authorization": auth, "Content-Type": "application/webhook+json"},
        )


async def _post_declared(
    gateway: GatewayProcess, body: bytes, auth: str
) -> tuple[int, dict[str, Any]]:
    """The status a POST of `body` is answered with once its headers are sent: the cap is
    answered from the declared length, and the connection then closed, so a client still
    writing a large body could see the reset before the answer (httpx does, under load)."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = (
            f"POST /livekit/webhook HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: {auth}\r\nContent-Type: application/webhook+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        async with asyncio.timeout(20):
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            answer: dict[str, Any] = json.loads(await reader.readexactly(length))
        return status, answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _calls_in(stack: _Stack, room: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.a.base_url, timeout=20) as http:
        items = (await http.get("/calls", headers=stack.headers)).json()["items"]
    return [c for c in items if c["metadata"].get("room") == room]


def _logged(gateway: GatewayProcess, *needles: str) -> bool:
    return any(all(n in line for n in needles) for line in gateway.log_text().splitlines())


async def test_a_replayed_participant_joined_is_acted_on_once(stack: _Stack) -> None:
    room = "call-" + uuid.uuid4().hex[:8]
    joined = lkapi.WebhookEvent(
        event="participant_joined",
        room=lkapi.Room(name=room),
        participant=lkapi.ParticipantInfo(
            identity="sip_" + uuid.uuid4().hex[:6],
            kind=lkapi.ParticipantInfo.Kind.SIP,
            attributes={
                "sip.phoneNumber": "+15550002222",
                "sip.trunkPhoneNumber": "+15557779999",
                "sip.callID": "SCL_" + uuid.uuid4().hex[:8],
            },
        ),
        id="EV_" + uuid.uuid4().hex[:12],
        created_at=int(time.time()),
    )
    body, auth = signed_webhook(stack.server, joined)
    assert (await _post(stack.a, body, auth)).status_code == 200
    deadline = time.monotonic() + 30
    while not await _calls_in(stack, room):
        assert time.monotonic() < deadline, "the first delivery opened no call"
        await asyncio.sleep(0.2)

    # The same request again: to the other gateway while the call is live, then to its own.
    for gateway in (stack.b, stack.a):
        replay = await _post(gateway, body, auth)
        assert replay.status_code == 200, replay.text
    deadline = time.monotonic() + 20
    while not (
        _logged(stack.b, "webhook event already handled", joined.id)
        and _logged(stack.a, "webhook event already handled", joined.id)
    ):
        if len(await _calls_in(stack, room)) > 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert not _logged(stack.b, "inbound SIP call", room), "the replay opened a second call"

    finished = lkapi.WebhookEvent(
        event="room_finished",
        room=lkapi.Room(name=room),
        id="EV_" + uuid.uuid4().hex[:12],
        created_at=int(time.time()),
    )
    assert (await _post(stack.a, *signed_webhook(stack.server, finished))).status_code == 200
    deadline = time.monotonic() + 30
    while True:
        calls = await _calls_in(stack, room)
        if all(c["ended_at"] for c in calls) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(calls) == 1, calls
    assert calls[0]["end_reason"] == "room-finished"


async def test_an_oversized_webhook_body_is_refused(stack: _Stack) -> None:
    event = lkapi.WebhookEvent(
        event="room_finished",
        room=lkapi.Room(name="call-big", metadata="x" * (2 * 1024 * 1024)),
        id="EV_" + uuid.uuid4().hex[:12],
        created_at=int(time.time()),
    )
    body, auth = signed_webhook(stack.server, event)
    assert (await _post_declared(stack.a, body, auth))[0] == 413
    # The gateway's body cap answers before any reading.
    assert (await _post_declared(stack.a, body, ""))[0] == 413
    small_unsigned = await _post(stack.a, b"{}", "")
    assert small_unsigned.status_code == 403
    # Over LiveKit's own cap (64 KiB), under the JSON routes' (1 MiB): the one body cap,
    # the middleware's, answers with its one error code, signed or not.
    mid = lkapi.WebhookEvent(
        event="room_finished",
        room=lkapi.Room(name="call-mid", metadata="x" * (200 * 1024)),
        id="EV_" + uuid.uuid4().hex[:12],
        created_at=int(time.time()),
    )
    body, auth = signed_webhook(stack.server, mid)
    for authorization in (auth, ""):
        status, answer = await _post_declared(stack.a, body, authorization)
        assert status == 413 and answer["error"]["code"] == "too_large", answer
