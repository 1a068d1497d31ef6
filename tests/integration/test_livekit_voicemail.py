"""Voicemail on a LiveKit SIP call, end to end against a real livekit-server: an outbound call
of an assistant with a voicemail plan is placed through `POST /call/outbound`; LiveKit's SIP
bridge (tests/livekit_sip_bridge.py: CreateSIPParticipant answered, everything else passed
through to the server) puts the callee in the room as a participant of kind SIP, which plays
either an answering machine (an espeak-ng greeting, then a beep) or a person ("Hello?").
The gateway's machine detector decides: the machine hears nothing until its beep, then the
message, and the call ends `voicemail`; the person is greeted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from livekit.protocol import sip as lksip

from tests.integration.conftest import GatewayProcess, run_gateway
from tests.livekit_caller import RATE, SPEAKING_RMS, RoomCaller, caller_token, espeak_pcm16k
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.livekit_sip_bridge import OnDial, SipBridge
from tests.net import free_port

NUMBER = "+15557770001"
GREETING = "Hello, this is Acme Dental calling. Is now a good time?"
MESSAGE = "Hi {{name}}, this is Acme Dental about your appointment. Please call us back."


@pytest.fixture(scope="module")
def stack(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, LiveKitServer, int]]:
    """A livekit-server, and a gateway that reaches it through a SIP bridge on `bridge_port`
    (started by each test: it plays that test's callee)."""
    work = tmp_path_factory.mktemp("lk-voicemail")
    port, bridge_port = free_port(), free_port()
    with run_livekit_server(work, webhook_url=f"http://127.0.0.1:{port}/livekit/webhook") as lk:
        env: dict[str, str | None] = {
            "LIVEKIT_URL": f"http://127.0.0.1:{bridge_port}",
            "LIVEKIT_API_KEY": lk.api_key,
            "LIVEKIT_API_SECRET": lk.api_secret,
        }
        with run_gateway(mongo_url, work, env, port=port) as gateway:
            yield gateway, lk, bridge_port


def _tone(hz: float, ms: int) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


async def _place_call(http: httpx.AsyncClient, key: str, name: str) -> str:
    """An assistant with a voicemail plan, the number and an outbound trunk (made once per
    test's database state: a second test finds them there) and the call placed."""
    h = {"x-api-key": key}
    await http.post("/numbers", headers=h, json={"number": NUMBER})  # 201, or the org's already
    assistant = await http.post(
        "/assistants",
        headers=h,
        json={
            "name": "Reminders",
            "system_prompt": "Remind {{name}} of their appointment.",
            "greeting": GREETING,
            "voicemail": {"action": "leave_message", "message": MESSAGE},
        },
    )
    assert assistant.status_code == 201, assistant.text
    trunks = (await http.get("/sip/trunks/outbound", headers=h)).json()["items"]
    if not trunks:
        trunk = await http.post(
            "/sip/trunks/outbound",
            headers=h,
            json={"name": "out", "address": "sip.example.com", "numbers": [NUMBER]},
        )
        assert trunk.status_code == 201, trunk.text
        trunks = [trunk.json()]
    placed = await http.post(
        "/call/outbound",
        headers=h,
        json={
            "assistant_id": assistant.json()["id"],
            "to_number": "+15558880002",
            "call_service": "livekit",
            "trunk_id": trunks[0]["id"],
            "metadata": {"name": name},
        },
    )
    assert placed.status_code == 201, placed.text
    return str(placed.json()["call_id"])


async def _until(check: Any, what: str, within_s: float = 30.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


def _answering(server: LiveKitServer, callee: RoomCaller, audio: np.ndarray) -> OnDial:
    """What the SIP bridge does when the dialled phone answers: the callee joins the room
    as the SIP participant LiveKit was asked for, and its line plays `audio`."""

    async def answer(dial: lksip.CreateSIPParticipantRequest) -> None:
        token = caller_token(
            server.api_key,
            server.api_secret,
            dial.room_name,
            dial.participant_identity,
            {**dict(dial.participant_attributes), "sip.callStatus": "active"},
        )
        await callee.join(server.url.replace("http://", "ws://"), token)
        callee.say(audio)

    return answer


def _agent_loud_before(callee: RoomCaller, moment: float) -> list[float]:
    return [t for t, rms in callee.agent_frames if rms > SPEAKING_RMS and t < moment]


async def test_a_machine_greeting_with_a_beep_gets_the_message_after_the_beep(
    stack: tuple[GatewayProcess, LiveKitServer, int],
) -> None:
    gateway, server, bridge_port = stack
    greeting = espeak_pcm16k(
        "Hi, you have reached Sam. I cannot take your call right now. "
        "Please leave a message after the tone."
    )
    line = np.concatenate([_silence(400), greeting, _silence(600), _tone(1000.0, 400)])
    callee = RoomCaller()
    async with (
        SipBridge(server.url, bridge_port, _answering(server, callee, line)) as bridge,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http,
    ):
        try:
            call_id = await _place_call(http, gateway.api_key, "Dana")

            async def playing() -> bool:
                return callee.speech_started_at is not None

            await _until(playing, "the callee answered")
            assert [d.participant_identity for d in bridge.dials] == [f"sip-{call_id}"]
            await callee.wait_said()
            beep_ended = time.monotonic()
            # The agent said nothing over the greeting or the beep ...
            assert _agent_loud_before(callee, beep_ended) == []
            # ... and leaves its message after the beep, then hangs up.
            await callee.wait_agent_audio(within_s=30)
            await asyncio.wait_for(callee.left.wait(), timeout=60)

            async def ended() -> dict[str, Any] | None:
                call = (await http.get(f"/calls/{call_id}", headers=_h(gateway))).json()
                return call if call["status"] not in ("queued", "ringing", "in-progress") else None

            call = await _until(ended, "the call ended")
            assert call["status"] == "completed" and call["end_reason"] == "voicemail", call
            said = [t["text"] for t in call["transcript"] if t["speaker"] == "agent"]
            assert said == [MESSAGE.replace("{{name}}", "Dana")]
            # The beep ended the greeting (not the gate's bound).
            assert ("machine_done", "beep") in _detections(gateway, call_id)
        finally:
            await callee.leave()


async def test_a_person_saying_hello_is_greeted(
    stack: tuple[GatewayProcess, LiveKitServer, int],
) -> None:
    gateway, server, bridge_port = stack
    callee = RoomCaller()
    line = np.concatenate([_silence(300), espeak_pcm16k("Hello?")])
    async with (
        SipBridge(server.url, bridge_port, _answering(server, callee, line)),
        httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http,
    ):
        try:
            call_id = await _place_call(http, gateway.api_key, "Lee")

            async def playing() -> bool:
                return callee.speech_started_at is not None

            await _until(playing, "the callee answered")
            await callee.wait_said()
            await callee.wait_agent_audio(within_s=30)  # the greeting
            await callee.wait_agent_silent()

            async def greeted() -> dict[str, Any] | None:
                call = (await http.get(f"/calls/{call_id}", headers=_h(gateway))).json()
                agent = [t["text"] for t in call["transcript"] if t["speaker"] == "agent"]
                return call if agent else None

            call = await _until(greeted, "the greeting stored")
            assert call["status"] == "in-progress"
            assert [t["text"] for t in call["transcript"] if t["speaker"] == "agent"] == [GREETING]
            # Nothing said before the greeting is answered: the greeting answers it.
            assert [t for t in call["transcript"] if t["speaker"] == "caller"] == []
            assert _detections(gateway, call_id) == [("human", "short-greeting")]
        finally:
            await callee.leave()

        async def ended() -> dict[str, Any] | None:
            call = (await http.get(f"/calls/{call_id}", headers=_h(gateway))).json()
            return call if call["status"] == "completed" else None

        call = await _until(ended, "the call ended when the person hung up")
        assert call["end_reason"] == "caller-hung-up"


def _detections(gateway: GatewayProcess, call_id: str) -> list[tuple[str, str]]:
    """The machine detector's decisions on `call_id`, from the gateway's log."""
    found = []
    for line in gateway.log_text().splitlines():
        if '"machine detection"' in line and call_id in line:
            entry = json.loads(line)
            found.append((entry["verdict"], entry["reason"]))
    return found


def _h(gateway: GatewayProcess) -> dict[str, str]:
    return {"x-api-key": gateway.api_key}
