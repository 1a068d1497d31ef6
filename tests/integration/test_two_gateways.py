"""Two gateway processes on one database, as behind a balancer.

Gateway B starting, and restarting, while A serves a Twilio call and a LiveKit room call
leaves both calls running to a normal end (only an expired lease makes a call lost, and
only B's own clock says when). Then A is killed with SIGKILL mid-call: B finishes each of
its calls once, as lost, after the lease expired, closes the room, and each call's report
goes out once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit import api as lkapi

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.livekit_caller import RoomCaller, caller_token, dispatch_attributes, espeak_pcm16k
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.net import free_port
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(300)

NUMBER = "+15550007777"
LEASE_S = 3.0
QUESTION = "What are your opening hours?"


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _metric(gateway: GatewayProcess, name: str) -> int:
    text = httpx.get(gateway.base_url + "/metrics", timeout=10).text
    match = re.search(rf"^voice_gateway_{name} (\d+)$", text, re.MULTILINE)
    assert match is not None, name
    return int(match.group(1))


async def _sweeps_over_two_leases(gateway: GatewayProcess) -> None:
    """Wait until `gateway`'s sweeper has judged the calls of others over two whole leases
    (it sweeps every third of a lease: seven rounds span two leases at least)."""

    async def swept() -> bool:
        return await asyncio.to_thread(_metric, gateway, "lost_call_sweeps_total") >= 7

    await _until("seven sweeps", swept)


async def _setup(
    http: httpx.AsyncClient, key: str, hook: str, server: LiveKitServer
) -> dict[str, str]:
    """An assistant with a webhook and a number, reached by SIP through a dispatch rule;
    returns the attributes the rule gives SIP participants."""
    assistant: dict[str, object] = {
        "name": "Shared",
        "system_prompt": "Help the caller.",
        "greeting": "Hello, you reached the shared line. How can I help?",
        "webhook_url": hook,
        "webhook_events": ["call.ended"],  # the reports are counted
        "phone_numbers": [NUMBER],
    }
    _, attributes = await dispatch_attributes(
        http, key, server.url, server.api_key, server.api_secret, assistant, [NUMBER]
    )
    return attributes


class _Calls:
    """A Twilio call and a room call placed on one gateway."""

    def __init__(
        self, gateway: GatewayProcess, token: str, server: LiveKitServer, rule: dict[str, str]
    ):
        self.phone = SimulatedTwilioCall(
            base_url=gateway.base_url,
            public_url=gateway.base_url,
            auth_token=token,
            to_number=NUMBER,
        )
        self.room = "call-" + uuid.uuid4().hex[:8]
        self.caller = RoomCaller()
        self._server = server
        self._attributes = {
            **rule,
            "sip.phoneNumber": "+15550001111",
            "sip.trunkPhoneNumber": NUMBER,
            "sip.callID": "SCL_" + uuid.uuid4().hex[:8],
        }

    async def start(self, http: httpx.AsyncClient) -> None:
        server = self._server
        await self.phone.start(http)
        token = caller_token(
            server.api_key, server.api_secret, self.room, "sip_c", self._attributes
        )
        await self.caller.join(server.url.replace("http://", "ws://"), token)
        await asyncio.gather(
            self.phone.wait_agent_audio(within_s=30), self.caller.wait_agent_audio(within_s=30)
        )
        await asyncio.gather(self.phone.wait_agent_silent(), self.caller.wait_agent_silent())

    async def converse(self) -> None:
        """One question on each call, answered: both calls are alive and served."""
        self.phone.say(espeak_mulaw(QUESTION))
        self.caller.say(espeak_pcm16k(QUESTION))
        await asyncio.gather(self.phone.wait_said(), self.caller.wait_said())
        await asyncio.gather(
            self.phone.wait_agent_audio(within_s=30), self.caller.wait_agent_audio(within_s=30)
        )
        await asyncio.gather(self.phone.wait_agent_silent(), self.caller.wait_agent_silent())

    async def ids(self, http: httpx.AsyncClient, key: str) -> tuple[str, str]:
        assert self.phone.call_id is not None
        room_call: list[str] = []

        async def stored() -> bool:
            items = (await http.get("/calls", headers={"x-api-key": key})).json()["items"]
            room_call[:] = [c["id"] for c in items if c["metadata"].get("room") == self.room]
            return bool(room_call)

        await _until(f"the call of room {self.room}", stored)
        return self.phone.call_id, room_call[0]

    async def aclose(self) -> None:
        await self.phone.aclose()
        await self.caller.leave()


async def _ended(http: httpx.AsyncClient, key: str, call_id: str) -> dict[str, Any]:
    stored: dict[str, Any] = {}

    async def ended() -> bool:
        stored.update((await http.get(f"/calls/{call_id}", headers={"x-api-key": key})).json())
        return bool(stored.get("ended_at"))

    await _until(f"call {call_id} to end", ended)
    return stored


async def _rooms(server: LiveKitServer) -> set[str]:
    async with lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
        listed = await lk.room.list_rooms(lkapi.ListRoomsRequest())
    return {r.name for r in listed.rooms}


def _reports(receiver: WebhookReceiver) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in receiver.accepted():
        call_id = request.json()["call"]["id"]
        counts[call_id] = counts.get(call_id, 0) + 1
    return counts


async def test_a_second_gateway_leaves_live_calls_alone_and_finishes_a_dead_ones_once(
    mongo_url: str, tmp_path: Path
) -> None:
    port_a = free_port()
    db = "two_gw_" + uuid.uuid4().hex[:8]
    for name in ("lk", "a1", "a2", "b1", "b2", "b3"):
        (tmp_path / name).mkdir()
    with (
        run_webhook_receiver() as receiver,
        run_livekit_server(
            tmp_path / "lk", webhook_url=f"http://127.0.0.1:{port_a}/livekit/webhook"
        ) as server,
    ):
        env: dict[str, str | None] = {
            "MONGODB_DB": db,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "CALL_LEASE_S": str(LEASE_S),
            "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
            "WEBHOOK_RETRY_BASE_S": "0.2",
            "WEBHOOK_RETRY_CAP_S": "1",
        }
        with run_gateway(mongo_url, tmp_path / "a1", env, port=port_a) as a:
            shared_token = a.auth_token  # every gateway behind one number shares it
            shared = {**env, "TWILIO_AUTH_TOKEN": shared_token, "GATEWAY_API_KEY": a.api_key}
            key = a.api_key
            async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
                rule = await _setup(http, key, receiver.url, server)

                # 1. B starts, then restarts, while A serves both calls.
                first = _Calls(a, a.auth_token, server, rule)
                try:
                    await first.start(http)
                    twilio_id, room_id = await first.ids(http, key)
                    with run_gateway(mongo_url, tmp_path / "b1", shared) as b:
                        await _sweeps_over_two_leases(b)
                        assert _metric(b, "calls_lost_total") == 0
                    with run_gateway(mongo_url, tmp_path / "b2", shared) as b:
                        await _sweeps_over_two_leases(b)
                        assert _metric(b, "calls_lost_total") == 0
                    await first.converse()  # both calls still talk, served by A
                    await first.phone.stop()  # both callers hang up: a normal end
                    await first.caller.leave()
                finally:
                    await first.aclose()
                for call_id in (twilio_id, room_id):
                    stored = await _ended(http, key, call_id)
                    assert (stored["status"], stored["end_reason"]) == (
                        "completed",
                        "caller-hung-up",
                    ), stored
                    assert sum(t["speaker"] == "caller" for t in stored["transcript"]) >= 1

        # 2. A serves two more calls and is killed; B finishes them once the lease expired.
        with (
            run_gateway(mongo_url, tmp_path / "a2", shared, port=port_a) as a,
            run_gateway(mongo_url, tmp_path / "b3", shared) as b,
        ):
            second = _Calls(a, shared_token, server, rule)
            async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
                try:
                    await second.start(http)
                    lost_ids = await second.ids(http, key)
                    assert second.room in await _rooms(server)
                    killed_at = time.monotonic()
                    os.kill(a.pid, signal.SIGKILL)
                    async with httpx.AsyncClient(base_url=b.base_url, timeout=20) as on_b:
                        lost = [await _ended(on_b, key, call_id) for call_id in lost_ids]
                finally:
                    await second.aclose()
            # Not before the lease expired: A beat last at most a third of a lease before
            # the kill, and B waits a whole lease after the last beat it saw.
            assert time.monotonic() - killed_at >= LEASE_S * 2 / 3
            for stored in lost:
                assert (stored["status"], stored["end_reason"]) == ("failed", "gateway-lost")

            async def room_closed() -> bool:
                return second.room not in await _rooms(server)

            await _until("the lost call's room to close", room_closed)
            finished = [
                line
                for line in b.log_text().splitlines()
                if "finished a call whose gateway stopped" in line
            ]
            assert len(finished) == 2 and all(
                any(call_id in line for line in finished) for call_id in lost_ids
            ), finished

            # One report per call: the two that ended normally and the two lost ones, each
            # delivered at its first attempt and taken once by the receiver.
            all_ids = {twilio_id, room_id, *lost_ids}
            async with httpx.AsyncClient(base_url=b.base_url, timeout=20) as on_b:

                async def delivered() -> bool:
                    page = await on_b.get(
                        "/webhooks/deliveries?status=delivered", headers={"x-api-key": key}
                    )
                    return {d["call_id"] for d in page.json()["items"]} >= all_ids

                await _until("four delivered reports", delivered)
            assert _reports(receiver) == dict.fromkeys(all_ids, 1)
            by_id = {r.json()["call"]["id"]: r.json()["call"] for r in receiver.accepted()}
            assert {by_id[i]["end_reason"] for i in lost_ids} == {"gateway-lost"}
