"""A LiveKit SIP call end to end against a real livekit-server: the server's signed webhook
tells the gateway a SIP participant joined; the gateway joins the room as the agent and
runs the same `CallSession` as for Twilio. The caller (a participant of kind SIP with the
attributes LiveKit's SIP bridge sets) speaks espeak-ng audio and listens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from livekit import api as lkapi

from tests.integration.conftest import GatewayProcess, run_gateway, run_room_stack
from tests.integration.test_management_api import create_key, operator_numbers
from tests.livekit_caller import (
    RoomCaller,
    caller_token,
    dispatch_attributes,
    espeak_pcm16k,
    sip_caller_joins,
)
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.net import free_port


@pytest.fixture(scope="module")
def room_stack(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, LiveKitServer]]:
    """A livekit-server whose webhooks go to a gateway configured for it."""
    work = tmp_path_factory.mktemp("lk-rooms")
    with run_room_stack(mongo_url, work, {"VAD_SILENCE_MS": "500"}) as stack:
        yield stack


async def _dispatch_attributes(
    http: httpx.AsyncClient, key: str, server: LiveKitServer
) -> tuple[str, dict[str, str]]:
    assistant = {
        "name": "Rooms",
        "system_prompt": "Help the caller at {{from_number}}.",
        "greeting": "Hello, you reached the room agent. How can I help you today?",
    }
    return await dispatch_attributes(
        http, key, server.url, server.api_key, server.api_secret, assistant, ["+15557770001"]
    )


async def _call_in(
    http: httpx.AsyncClient, key: str, room: str, within_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        calls = (await http.get("/calls", headers={"x-api-key": key})).json()["items"]
        mine = [c for c in calls if c["metadata"].get("room") == room]
        if mine:
            return dict(mine[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no call stored for room {room}")


async def _logged(gateway: GatewayProcess, *needles: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if any(all(n in line for n in needles) for line in gateway.log_text().splitlines()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway never logged {needles}")


async def test_sip_caller_in_a_room_talks_to_the_agent(
    room_stack: tuple[GatewayProcess, LiveKitServer],
) -> None:
    gateway, server = room_stack
    key = gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        assistant_id, rule_attributes = await _dispatch_attributes(http, key, server)
        room, attributes, caller = await sip_caller_joins(
            server, rule_attributes, "+15557770001", "sip_caller"
        )
        try:
            # The webhook brings the agent in; it greets.
            await caller.wait_agent_audio(within_s=30)
            await caller.wait_agent_silent()
            call = await _call_in(http, key, room)
            assert call["transport"] == "livekit" and call["assistant_id"] == assistant_id
            assert call["from_number"] == "+15550001111"
            assert call["call_sid"] == attributes["sip.callID"]
            # Keys pressed on the phone reach the session.
            await caller.room.local_participant.publish_dtmf(code=7, digit="7")
            await _logged(gateway, '"dtmf received"', '"digit": "7"')

            caller.say(espeak_pcm16k("What are your opening hours?"))
            await caller.wait_said()
            await caller.wait_agent_audio()
            await caller.wait_agent_silent()

            # A long answer, interrupted: the agent's audio stops within 500 ms.
            caller.say(espeak_pcm16k("I would like to book an appointment."))
            await caller.wait_said()
            await caller.wait_agent_audio()
            await asyncio.sleep(1.2)
            await caller.wait_agent_audio(within_s=3)  # mid-word, not in a pause
            caller.say(espeak_pcm16k("Yes please."))
            await asyncio.sleep(0.05)
            spoke_at = caller.speech_started_at
            assert spoke_at is not None
            stopped_at = await caller.wait_agent_silent(quiet_s=0.6, within_s=10)
            assert stopped_at - spoke_at < 0.5, f"agent kept talking {stopped_at - spoke_at:.3f} s"
            await caller.wait_said()
            await caller.wait_agent_audio()
            await caller.wait_agent_silent()

            # Goodbye: the agent answers, then closes the room (which hangs the caller up).
            # The offline recogniser may mishear it (espeak's "Goodbye." alone comes out as
            # "i"); a caller would say it again, once the agent's answer to the misheard
            # line is over, not over it.
            for line in ("Okay, goodbye.", "That is all, goodbye.", "Okay, bye."):
                caller.say(espeak_pcm16k(line))
                await caller.wait_said()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(caller.left.wait(), 10)
                if caller.left.is_set():
                    break
                await caller.wait_agent_silent()
            assert caller.left.is_set(), "the agent did not hang up"
        finally:
            await caller.leave()

        deadline = time.monotonic() + 15
        while True:
            stored = (await http.get(f"/calls/{call['id']}", headers={"x-api-key": key})).json()
            if stored["ended_at"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert stored["status"] == "completed" and stored["end_reason"] == "agent-ended"
        turns = stored["transcript"]
        assert turns[0]["speaker"] == "agent"
        assert turns[0]["text"].startswith("Hello, you reached the room agent")
        assert sum(t["speaker"] == "caller" for t in turns) >= 3
        assert any(t["interrupted"] for t in turns if t["speaker"] == "agent")
        async with lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
            rooms = await lk.room.list_rooms(lkapi.ListRoomsRequest())
        assert room not in {r.name for r in rooms.rooms}


async def test_unsigned_or_forged_webhooks_are_refused(
    room_stack: tuple[GatewayProcess, LiveKitServer],
) -> None:
    gateway, server = room_stack
    body = b'{"event": "room_finished", "room": {"name": "call-x"}}'
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        unsigned = await http.post("/livekit/webhook", content=body)
        assert unsigned.status_code == 403
        assert unsigned.json()["error"]["code"] == "forbidden"
        forged = lkapi.AccessToken(server.api_key, "not-the-secret" * 3).with_sha256("x").to_jwt()
        wrong = await http.post("/livekit/webhook", content=body, headers={"Authorization": forged})
        assert wrong.status_code == 403
        # Right key, but the body is not the one signed.
        signed = lkapi.AccessToken(server.api_key, server.api_secret).with_sha256("AAAA").to_jwt()
        tampered = await http.post(
            "/livekit/webhook", content=body, headers={"Authorization": signed}
        )
        assert tampered.status_code == 403


async def wait_ended(
    http: httpx.AsyncClient, key: str, call_id: str, within_s: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stored = (await http.get(f"/calls/{call_id}", headers={"x-api-key": key})).json()
        if stored["ended_at"]:
            return dict(stored)
        await asyncio.sleep(0.1)
    raise AssertionError("the call never ended")


async def room_names(server: LiveKitServer) -> set[str]:
    async with lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
        rooms = await lk.room.list_rooms(lkapi.ListRoomsRequest())
    return {r.name for r in rooms.rooms}


def _sip_attributes() -> dict[str, str]:
    return {
        "sip.phoneNumber": "+15550002222",
        "sip.trunkPhoneNumber": "+15557779999",  # reaches no assistant: the default one
        "sip.callID": "SCL_" + uuid.uuid4().hex[:8],
    }


async def test_caller_hanging_up_ends_the_call_once(
    room_stack: tuple[GatewayProcess, LiveKitServer],
) -> None:
    gateway, server = room_stack
    room = "call-" + uuid.uuid4().hex[:8]
    caller = RoomCaller()
    token = caller_token(server.api_key, server.api_secret, room, "sip_c", _sip_attributes())
    await caller.join(server.url.replace("http://", "ws://"), token)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        try:
            await caller.wait_agent_audio(within_s=30)
        finally:
            await caller.leave()  # hang up mid-greeting
        call = await _call_in(http, gateway.api_key, room)
        stored = await wait_ended(http, gateway.api_key, call["id"])
        assert stored["end_reason"] == "caller-hung-up" and stored["status"] == "completed"
        assert stored["assistant_id"] is None  # the default assistant answered
        # Participant left, then room finished: both arrive, one finalisation.
        await _logged(gateway, '"left room"', room)
        await asyncio.sleep(1.0)
        ends = [
            line
            for line in gateway.log_text().splitlines()
            if '"call ended"' in line and call["id"] in line
        ]
        assert len(ends) == 1, ends
        assert room not in await room_names(server)


async def test_many_rooms_then_a_killed_gateway_leaves_no_zombie_rooms(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    work = tmp_path_factory.mktemp("lk-restart")
    db = "lk_restart_" + uuid.uuid4().hex[:8]
    webhook = f"http://127.0.0.1:{port}/livekit/webhook"
    with run_livekit_server(work, webhook_url=webhook) as server:
        env: dict[str, str | None] = {
            "MONGODB_DB": db,
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "CALL_LEASE_S": "3",
        }
        rooms = ["call-" + uuid.uuid4().hex[:8] for _ in range(3)]
        callers = [RoomCaller() for _ in rooms]
        ws_url = server.url.replace("http://", "ws://")
        try:
            with run_gateway(mongo_url, work, env, port=port) as first:
                for room, caller in zip(rooms, callers, strict=True):
                    token = caller_token(
                        server.api_key, server.api_secret, room, "sip_c", _sip_attributes()
                    )
                    await caller.join(ws_url, token)
                # Three rooms, each with its own session, all greeted by one process.
                await asyncio.gather(*(c.wait_agent_audio(within_s=30) for c in callers))
                assert set(rooms) <= await room_names(server)
                os.kill(first.pid, signal.SIGKILL)
                key = first.api_key
            env["GATEWAY_API_KEY"] = key
            with run_gateway(mongo_url, work, env, port=port) as second:
                # The restarted gateway finishes them once their lease expired, and closes
                # their rooms.
                async with httpx.AsyncClient(base_url=second.base_url, timeout=20) as http:
                    deadline = time.monotonic() + 60
                    while True:
                        calls = (await http.get("/calls", headers={"x-api-key": key})).json()
                        by_room = {c["metadata"]["room"]: c for c in calls["items"]}
                        if all(by_room[room]["ended_at"] for room in rooms):
                            break
                        assert time.monotonic() < deadline, by_room
                        await asyncio.sleep(0.2)
                    for room in rooms:
                        assert by_room[room]["status"] == "failed"
                        assert by_room[room]["end_reason"] == "gateway-lost"
                deadline = time.monotonic() + 30
                while set(rooms) & await room_names(server):
                    assert time.monotonic() < deadline, "rooms left open"
                    await asyncio.sleep(0.2)
                for caller in callers:
                    await asyncio.wait_for(caller.left.wait(), 10)
        finally:
            for caller in callers:
                await caller.leave()


async def test_a_trunk_left_on_a_reassigned_number_no_longer_reaches_its_assistant(
    room_stack: tuple[GatewayProcess, LiveKitServer], mongo_url: str
) -> None:
    """The operator gives the number of a rule's trunk to another organisation: a call that
    the old trunk still brings in does not reach the old organisation's assistant."""
    gateway, server = room_stack
    number = "+15557770123"
    assistant = {"name": "Old owner", "system_prompt": "Help.", "phone_numbers": [number]}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        _, rule_attributes = await dispatch_attributes(
            http,
            gateway.api_key,
            server.url,
            server.api_key,
            server.api_secret,
            assistant,
            [number],
        )
        await asyncio.to_thread(create_key, mongo_url, gateway.db_name, "globex")
        printed = await asyncio.to_thread(
            operator_numbers, mongo_url, gateway.db_name, "assign", number, "--org", "globex"
        )
        assert "still lists it" in printed  # the old organisation's inbound trunk
        room, _, caller = await sip_caller_joins(server, rule_attributes, number, "sip_old")
        try:
            call = await _call_in(http, gateway.api_key, room)
        finally:
            await caller.leave()
        assert call["assistant_id"] is None  # the default assistant, not the old owner's
        await _logged(gateway, "called number is not registered", room)


async def test_an_assistant_that_cannot_answer_leaves_no_agent_in_the_room(
    room_stack: tuple[GatewayProcess, LiveKitServer],
) -> None:
    """The agent starts joining an inbound room as soon as its dispatch is claimed, before
    the call is stored (gateway/livekit/connection.py). When no call can be opened (the
    greeting needs a value nobody gave), the agent that joined leaves again and nothing
    answers: no call is stored and the caller is not talked to."""
    gateway, server = room_stack
    number = "+15557770456"
    assistant = {
        "name": "Needs a name",
        "system_prompt": "Help.",
        "greeting": "Hello {{customer_name}}, thanks for calling.",
    }
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        _, rule_attributes = await dispatch_attributes(
            http, gateway.api_key, server.url, server.api_key, server.api_secret,
            assistant, [number],
        )  # fmt: skip
        room, _, caller = await sip_caller_joins(server, rule_attributes, number, "sip_unanswered")
        try:
            await _logged(gateway, "assistant cannot answer", room, within_s=30)
            deadline = time.monotonic() + 20
            while True:  # the agent's early join may finish after the refusal: then it leaves
                others = await _participants(server, room, but="sip_unanswered")
                if not others:
                    break
                assert time.monotonic() < deadline, f"still in the room: {others}"
                await asyncio.sleep(0.2)
            calls = (await http.get("/calls", headers={"x-api-key": gateway.api_key})).json()
            assert not [c for c in calls["items"] if c["metadata"].get("room") == room]
            assert not caller.agent_frames  # nobody spoke to the caller
        finally:
            await caller.leave()


async def _participants(server: LiveKitServer, room: str, *, but: str) -> list[str]:
    """The identities in `room` other than `but`."""
    async with lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
        listed = await lk.room.list_participants(lkapi.ListParticipantsRequest(room=room))
    return [p.identity for p in listed.participants if p.identity != but]
