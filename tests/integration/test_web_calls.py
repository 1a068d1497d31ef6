"""Web calls end to end against a real livekit-server: `POST /web-calls` answers a room, a
LiveKit URL and a caller token; a Python `livekit.rtc` participant joins with them as the
browser would, hears the agent's greeting, asks a question, hears the answer and leaves.
The token lets that caller into that room only, with no admin grant; another
organisation's assistant is 404; a browser that never joins leaves a no-answer call."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from livekit import api as lkapi
from livekit import rtc

from tests.integration.conftest import GatewayProcess, run_room_stack
from tests.integration.test_event_stream import sse
from tests.integration.test_livekit_calls import room_names, wait_ended
from tests.integration.test_management_api import create_key
from tests.livekit_caller import RoomCaller, espeak_pcm16k
from tests.livekit_server import LiveKitServer
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

TOKEN_TTL_S = 12  # the browser must join within it (the no-answer test waits it out)
JOIN_GRACE_S = 10  # gateway.livekit.room.WEB_JOIN_GRACE_S

Stack = tuple[GatewayProcess, LiveKitServer, WebhookReceiver]


@pytest.fixture(scope="module")
def web_stack(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env: dict[str, str | None] = {
        "VAD_SILENCE_MS": "500",
        "WEB_CALL_TOKEN_TTL_S": str(TOKEN_TTL_S),
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    }
    with (
        run_webhook_receiver() as receiver,
        run_room_stack(mongo_url, tmp_path_factory.mktemp("web-calls"), env) as (gw, lk),
    ):
        yield gw, lk, receiver


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


async def _assistant(http: httpx.AsyncClient, key: str, **changes: object) -> str:
    body = {
        "name": "Web agent",
        "system_prompt": "You help {{customer}} with the shop's opening hours.",
        "greeting": "Hello {{customer}}, you reached the web agent. How can I help you today?",
        **changes,
    }
    created = await http.post("/assistants", json=body, headers=_h(key))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _web_call(
    http: httpx.AsyncClient, key: str, assistant_id: str, metadata: dict[str, str]
) -> dict[str, Any]:
    posted = await http.post(
        "/web-calls", json={"assistant_id": assistant_id, "metadata": metadata}, headers=_h(key)
    )
    assert posted.status_code == 201, posted.text
    body: dict[str, Any] = posted.json()
    assert set(body) == {"call_id", "livekit_url", "token", "room"}
    return body


def _standard_token(server: LiveKitServer, room: str, identity: str) -> str:
    grants = lkapi.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    return (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .to_jwt()
    )


async def test_a_browser_caller_talks_to_the_agent(web_stack: Stack) -> None:
    gateway, server, receiver = web_stack
    key = gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        assistant_id = await _assistant(http, key, webhook_url=receiver.url)
        # "room" in the metadata is the client's value, never where the call is held.
        web = await _web_call(http, key, assistant_id, {"customer": "Ada", "room": "elsewhere"})
        call_id = web["call_id"]
        assert web["room"] == f"call-{call_id}"
        assert web["livekit_url"] == server.url.replace("http://", "ws://")
        assert web["room"] in await room_names(server)  # made before the answer

        # Someone else in the room (not the token's identity) is not the caller: its audio
        # does not answer the call, and its leaving does not hang up.
        lurker = RoomCaller()
        await lurker.join(web["livekit_url"], _standard_token(server, web["room"], "lurker"))
        caller = RoomCaller()
        try:
            await caller.join(web["livekit_url"], web["token"])
            await caller.wait_agent_audio(within_s=30)
            await caller.wait_agent_silent()
            await lurker.leave()
            live = (await http.get(f"/calls/{call_id}", headers=_h(key))).json()
            assert live["status"] == "in-progress" and live["transport"] == "web", live

            caller.say(espeak_pcm16k("What are your opening hours?"))
            await caller.wait_said()
            await caller.wait_agent_audio(within_s=30)
            await caller.wait_agent_silent()
        finally:
            await lurker.leave()
            await caller.leave()  # the browser's tab is closed

        stored = await wait_ended(http, key, call_id)
        assert stored["status"] == "completed" and stored["end_reason"] == "caller-hung-up"
        assert stored["transport"] == "web" and stored["direction"] == "inbound"
        assert stored["from_number"] == "" and stored["to_number"] == ""
        assert stored["assistant_id"] == assistant_id
        assert stored["metadata"] == {"customer": "Ada", "room": "elsewhere"}
        turns = stored["transcript"]
        assert turns[0]["speaker"] == "agent"
        assert turns[0]["text"].startswith("Hello Ada, you reached the web agent")
        assert any(t["speaker"] == "caller" for t in turns)
        assert turns[-1]["speaker"] == "agent" and len(turns) >= 3, turns
        carrier = [i for i in stored["cost"]["items"] if i["kind"] == "carrier"]
        assert [(i["provider"], Decimal(i["amount"])) for i in carrier] == [("web", Decimal(0))]
        await _rooms_closed(server, web["room"])

        # Its events and its report, as any call's.
        async with sse(http, key, {"call_id": call_id, "last_event_id": "0"}) as events:
            await events.until(
                "call.ended", lambda: any(e.event == "call.ended" for e in events.events)
            )
            seen = list(events.events)
        assert seen[0].event == "call.started"
        started = json.loads(seen[0].data)["call"]
        assert started["transport"] == "web" and started["id"] == call_id
        spoken = [json.loads(e.data)["turn"]["speaker"] for e in seen if e.event == "call.turn"]
        assert {"agent", "caller"} <= set(spoken)
        report = await _report(receiver, call_id)
        assert report["call"]["transport"] == "web"
        assert report["call"]["end_reason"] == "caller-hung-up"


async def _report(receiver: WebhookReceiver, call_id: str, within_s: float = 30) -> dict[str, Any]:
    """The `call.ended` webhook of `call_id`, once the receiver has accepted it."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for hook in receiver.accepted():
            body = hook.json()
            if body["type"] == "call.ended" and body["call"]["id"] == call_id:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError("no call.ended webhook")


async def test_the_token_joins_its_room_only_as_its_caller(web_stack: Stack) -> None:
    gateway, server, _ = web_stack
    key = gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        assistant_id = await _assistant(http, key)
        web = await _web_call(http, key, assistant_id, {"customer": "Bo"})
        claims = lkapi.TokenVerifier(server.api_key, server.api_secret).verify(web["token"])
        assert claims.identity == f"web-{web['call_id']}"
        video = claims.video
        assert video is not None and video.room == web["room"] and video.room_join
        assert not (video.room_admin or video.room_create or video.room_list)
        assert not (video.room_record or video.ingress_admin or video.agent or video.hidden)
        assert video.can_publish_sources == ["microphone"] and video.can_subscribe
        assert video.can_publish_data is False
        payload = json.loads(_b64(web["token"].split(".")[1]))
        assert 0 < payload["exp"] - time.time() <= TOKEN_TTL_S

        # The same token edited to name another room: livekit-server refuses it.
        other = await _web_call(http, key, assistant_id, {"customer": "Cy"})
        forged = _with_claim(web["token"], other["room"])
        intruder = rtc.Room()
        with pytest.raises(rtc.ConnectError):
            await intruder.connect(web["livekit_url"], forged)
        await intruder.disconnect()
        # Nor does it open LiveKit's room service (list, delete, remove a participant).
        base = server.url + "/twirp/livekit.RoomService/"
        auth = {"Authorization": f"Bearer {web['token']}"}
        for method, body in (
            ("ListRooms", {}),
            ("DeleteRoom", {"room": other["room"]}),
            ("RemoveParticipant", {"room": other["room"], "identity": f"agent-{other['call_id']}"}),
        ):
            refused = await http.post(base + method, json=body, headers=auth)
            assert refused.status_code in (401, 403), (method, refused.text)
        assert other["room"] in await room_names(server)
        for call in (web, other):  # nobody joins them: they end unanswered, rooms closed
            ended = await wait_ended(http, key, call["call_id"], TOKEN_TTL_S + JOIN_GRACE_S + 30)
            assert ended["status"] == "no-answer" and ended["end_reason"] == "no-answer"
            assert ended["transcript"] == []
            carrier = [i for i in ended["cost"]["items"] if i["kind"] == "carrier"]
            assert [Decimal(i["quantity"]) for i in carrier] == [Decimal(0)]
        await _rooms_closed(server, web["room"], other["room"])


async def _rooms_closed(server: LiveKitServer, *rooms: str, within_s: float = 20) -> None:
    """Wait until LiveKit lists none of `rooms` (the gateway closes a room after the call's
    final write)."""
    deadline = time.monotonic() + within_s
    while set(rooms) & await room_names(server):
        assert time.monotonic() < deadline, f"rooms left open: {rooms}"
        await asyncio.sleep(0.1)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _with_claim(token: str, room: str) -> str:
    """`token` with its room claim changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(_b64(payload))
    claims["video"]["room"] = room
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


async def test_another_organisations_assistant_is_not_found(
    web_stack: Stack, mongo_url: str
) -> None:
    gateway, _, _ = web_stack
    other_key = await asyncio.to_thread(create_key, mongo_url, gateway.db_name, "globex-web")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        theirs = await _assistant(http, other_key)
        ours = await http.post(
            "/web-calls", json={"assistant_id": theirs, "metadata": {"customer": "x"}},
            headers=_h(gateway.api_key),
        )  # fmt: skip
        unknown = await http.post(
            "/web-calls", json={"assistant_id": "0" * 24}, headers=_h(gateway.api_key)
        )
        assert ours.status_code == unknown.status_code == 404
        assert ours.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        calls = (await http.get("/calls", headers=_h(other_key))).json()["items"]
        assert calls == []


async def test_a_browser_that_leaves_before_speaking_cancels_the_call(web_stack: Stack) -> None:
    """Joined, microphone never published (say permission refused), tab closed: the call
    ends as canceled (its leaving, not the token's time running out: that is no-answer)."""
    gateway, server, _ = web_stack
    key = gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        web = await _web_call(http, key, await _assistant(http, key), {"customer": "Di"})
        browser = rtc.Room()
        await browser.connect(web["livekit_url"], web["token"])
        agent, deadline = f"agent-{web['call_id']}", time.monotonic() + 20
        while agent not in browser.remote_participants:  # left with the agent there to see it
            assert time.monotonic() < deadline, "the agent never joined"
            await asyncio.sleep(0.05)
        await browser.disconnect()
        ended = await wait_ended(http, key, web["call_id"], within_s=30)
        assert (ended["status"], ended["end_reason"]) == ("canceled", "caller-hung-up"), ended
        await _rooms_closed(server, web["room"])
