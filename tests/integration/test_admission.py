"""Admission control against a real gateway process bounded to two live calls
(MAX_LIVE_CALLS=2): two simulated Twilio callers talk to the agent; a third call is
answered `<Reject reason="busy"/>`, stored busy/gateway-full and counted; an outbound
call is refused 503 with Retry-After and placed once there is room again; the two live
calls finish normally with their transcripts."""

from __future__ import annotations

import asyncio
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from telephony.twilio import TwilioSignatureValidator

from .conftest import FakeServer, GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

TWILIO_ACCOUNT = "AC" + "1" * 32
OUR_NUMBER = "+15557770001"


@pytest.fixture(scope="module")
def bounded_gateway(
    mongo_url: str, twilio_fake: FakeServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        "MAX_LIVE_CALLS": "2",
        # The lag bound is the unit tests' (an injected clock): a loaded CI machine must not
        # make this test about it.
        "MAX_LOOP_LAG_MS": "10000",
        "ADMISSION_RETRY_AFTER_S": "7",
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "VAD_SILENCE_MS": "400",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("admission"), env) as gateway:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=gateway.auth_token)
        yield gateway


def _call(gateway: GatewayProcess) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )


async def _voice_webhook(http: httpx.AsyncClient, gateway: GatewayProcess, call_sid: str) -> str:
    """POST Twilio's signed voice webhook for a new inbound call; the TwiML answered."""
    form = {
        "AccountSid": TWILIO_ACCOUNT,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550003333",
        "To": "+15550002222",
    }
    url = gateway.base_url + "/twilio/voice"
    signature = TwilioSignatureValidator(gateway.auth_token).sign(url, form)
    answer = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200, answer.text
    return answer.text


async def _stored_by_sid(
    http: httpx.AsyncClient, key: str, call_sid: str, within_s: float = 30
) -> dict[str, Any]:
    """The stored call of `call_sid` once it is listed (stored after the answer went)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        items = (await http.get("/calls", headers={"x-api-key": key})).json()["items"]
        found = [c for c in items if c["call_sid"] == call_sid]
        if found:
            return found[0]
        assert asyncio.get_running_loop().time() < deadline, f"{call_sid} was never stored"
        await asyncio.sleep(0.1)


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


async def _talk(call: SimulatedTwilioCall, question: bytes) -> None:
    await call.wait_agent_silent()
    call.say(question)
    await call.wait_said()
    await call.wait_agent_audio(within_s=20)
    await call.wait_agent_silent()


async def test_a_full_gateway_refuses_new_calls_and_keeps_its_live_ones(
    bounded_gateway: GatewayProcess, twilio_fake: FakeServer
) -> None:
    gateway = bounded_gateway
    key = gateway.api_key
    headers = {"x-api-key": key}
    question = espeak_mulaw("What are your opening hours?")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as http:
        assistant = await http.post(
            "/assistants",
            headers=headers,
            json={
                "name": "Outbound",
                "system_prompt": "Be brief.",
                "greeting": "Hello, this is the outbound assistant.",
                "phone_numbers": [OUR_NUMBER],
            },
        )
        assert assistant.status_code == 201, assistant.text
        outbound = {
            "assistant_id": assistant.json()["id"],
            "to_number": "+15558880002",
            "from_number": OUR_NUMBER,
            "call_service": "twilio",
        }

        live = [_call(gateway), _call(gateway)]
        try:
            for call in live:
                await call.start(http)
            for call in live:
                await call.wait_agent_audio(within_s=20)  # both greeted: both live

            # A third call: refused at once, as Twilio understands it (a busy tone).
            refused_sid = "CA" + secrets.token_hex(16)
            twiml = await _voice_webhook(http, gateway, refused_sid)
            reject = ET.fromstring(twiml).find("./Reject")
            assert reject is not None and reject.attrib == {"reason": "busy"}, twiml
            assert ET.fromstring(twiml).find("./Connect") is None

            # An outbound call: 503 with Retry-After, nothing placed.
            full = await http.post("/call/outbound", json=outbound, headers=headers)
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"] == "7"
            assert full.json()["error"]["code"] == "gateway_full"
            assert not [e for e in twilio_fake.log() if e.get("method") == "POST"]

            # The live calls go on, answered as usual, while the refusals are handled.
            await asyncio.gather(*(_talk(call, question) for call in live))
            for call in live:
                await call.stop()
        finally:
            for call in live:
                await call.aclose()

        stored = await _stored_by_sid(http, key, refused_sid)
        assert stored["status"] == "busy"
        assert stored["end_reason"] == "gateway-full"
        assert stored["direction"] == "inbound"

        metrics = (await http.get("/metrics")).text
        prefix = "voice_gateway_calls_refused_total"
        assert _metric(metrics, f'{prefix}{{arrival="twilio",cause="live-calls"}}') == 1
        assert _metric(metrics, f'{prefix}{{arrival="outbound",cause="live-calls"}}') == 1
        assert "voice_gateway_event_loop_lag_ms " in metrics

        for call in live:
            assert call.call_id is not None
            done = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()
            assert done["status"] == "completed", done
            assert done["end_reason"] == "caller-hung-up"
            speakers = [t["speaker"] for t in done["transcript"]]
            assert speakers[0] == "agent" and "caller" in speakers
            assert speakers.count("agent") >= 2  # the greeting and the answer

        # Once the live calls are finished there is room again: the outbound call is placed.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            placed = await http.post("/call/outbound", json=outbound, headers=headers)
            if placed.status_code != 503:
                break
            assert asyncio.get_running_loop().time() < deadline, "no room after the calls"
            await asyncio.sleep(0.1)
        assert placed.status_code == 201, placed.text

    log_text = gateway.log_text()
    refusals = [line for line in log_text.splitlines() if "call refused" in line]
    assert any(refused_sid in line and "live-calls" in line for line in refusals)
