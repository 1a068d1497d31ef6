"""End to end: a call placed exactly as Twilio places it, against a real gateway process and
the real database, on embedded providers (offline STT, espeak-ng, the local agent)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from telephony.twilio import TwilioSignatureValidator

from .conftest import GatewayProcess

pytestmark = pytest.mark.timeout(120)


def _call(gateway: GatewayProcess) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )


async def test_call_greeting_answer_barge_in_and_stop(gateway: GatewayProcess) -> None:
    hours, booking, yes = (
        espeak_mulaw(t)
        for t in (
            "What are your opening hours?",
            "I would like to book an appointment.",
            "Yes please.",
        )
    )
    headers = {"x-api-key": gateway.api_key}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        try:
            # The agent greets first.
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            greeting_frames = call.log.media_frames
            assert greeting_frames > 50  # > 1 s of greeting

            # A question, then an answer.
            call.say(hours)
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            assert call.log.media_frames > greeting_frames + 25
            assert not call.log.clears

            # Barge-in: talk over the agent's long answer; the gateway sends `clear`.
            call.say(booking)
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await asyncio.sleep(1.0)
            assert call.agent_speaking
            spoke_at = time.monotonic()
            call.say(yes)
            for _ in range(100):
                if call.log.clears:
                    break
                await asyncio.sleep(0.02)
            assert call.log.clears, "no clear after the caller talked over the agent"
            assert call.log.clears[0] - spoke_at < 1.0
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()

            # Twilio hangs up: `stop`, and the gateway closes the socket.
            await call.stop()
            assert call.log.close_code == 1000
        finally:
            await call.aclose()

        assert call.call_id is not None
        stored = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()
        listed = (await http.get("/calls", headers=headers)).json()["items"]

    assert listed[0]["id"] == call.call_id
    assert stored["call_sid"] == call.call_sid
    assert stored["status"] == "completed"
    assert stored["end_reason"] == "caller-hung-up"
    assert stored["stream_sid"] == call.stream_sid
    turns = stored["transcript"]
    speakers = [t["speaker"] for t in turns]
    assert speakers[0] == "agent" and turns[0]["text"].startswith("Hello")
    assert speakers.count("caller") >= 3
    assert all(t["text"] for t in turns if t["speaker"] == "caller")
    interrupted = [t for t in turns if t["interrupted"]]
    assert len(interrupted) == 1 and interrupted[0]["speaker"] == "agent"
    full_reply = "I can book that for you. Our next free slot is tomorrow at ten in the morning."
    # Only what the caller heard is kept: a strict prefix of the reply.
    assert full_reply.startswith(interrupted[0]["text"]) or interrupted[0]["text"] in full_reply
    assert len(interrupted[0]["text"]) < len(full_reply)
    starts = [t["start_ms"] for t in turns]
    assert starts == sorted(starts)
    # Answers carry their latency from the caller's end of speech; the call keeps p50/p95.
    answered = [t for t in turns[1:] if t["speaker"] == "agent" and not t["interrupted"]]
    stages = ["stt_final", "llm_first_token", "tts_first_byte", "first_frame_out"]
    for turn in answered:
        assert list(turn["latency"]) == stages
        # Ordered, and in milliseconds (not a latency bound: a loaded machine is slow).
        assert 0 < turn["latency"]["stt_final"] <= turn["latency"]["first_frame_out"] < 60_000
    assert set(stored["latency_p50"]) == set(stages)
    assert stored["latency_p95"]["first_frame_out"] >= stored["latency_p50"]["first_frame_out"]


async def test_agent_hangs_up_after_goodbye(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            call.say(espeak_mulaw("Thank you, goodbye."))
            await call.wait_closed(within_s=30)
            assert call.log.close_code == 1000
        finally:
            await call.aclose()
        stored = (
            await http.get(f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key})
        ).json()
    assert stored["status"] == "completed"
    assert stored["end_reason"] == "agent-ended"
    assert stored["transcript"][-1]["speaker"] == "agent"
    assert "Goodbye" in stored["transcript"][-1]["text"]


async def test_unsigned_upgrade_is_refused_with_403(gateway: GatewayProcess) -> None:
    url = gateway.base_url.replace("http", "ws") + "/twilio/stream"
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 403
    bad = {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, additional_headers=bad)
    assert refused.value.response.status_code == 403


async def _signed_stream(gateway: GatewayProcess) -> websockets.ClientConnection:
    url = gateway.base_url.replace("http", "ws") + "/twilio/stream"
    signature = TwilioSignatureValidator(gateway.auth_token).sign(url, {})
    return await websockets.connect(url, additional_headers={"X-Twilio-Signature": signature})


def _start(params: dict[str, str], call_sid: str = "CA" + "0" * 32) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": "MZ" + "0" * 32,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": "MZ" + "0" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            },
        }
    )


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        (["{not json"], 1007),
        ([json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "AAAA"}})], 1008),
        ([_start({})], 1008),
        ([_start({"token": "forged", "call_id": "x"})], 1008),
        (["x" * 70_000], 1009),
    ],
    ids=["malformed-json", "media-before-start", "no-token", "forged-token", "oversize"],
)
async def test_bad_input_closes_with_code(
    gateway: GatewayProcess, messages: list[str], code: int
) -> None:
    ws = await _signed_stream(gateway)
    for message in messages:
        await ws.send(message)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == code
    assert ws.close_reason
    # The gateway is still up and serving.
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        assert (await http.get("/health")).status_code == 200


async def test_bad_base64_after_start_fails_the_call_but_keeps_it(gateway: GatewayProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _call(gateway)
        await call.start(http)
        await call.wait_agent_audio(within_s=10)
        assert call._ws is not None
        await call._ws.send(
            json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": "999",
                    "streamSid": call.stream_sid,
                    "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "!!"},
                }
            )
        )
        await call.wait_closed(within_s=10)
        assert call.log.close_code == 1007
        stored = (
            await http.get(f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key})
        ).json()
    assert stored["status"] == "failed"
    assert stored["end_reason"] == "protocol-error"
    # The greeting the agent had already spoken stays stored.
    assert stored["transcript"] and stored["transcript"][0]["speaker"] == "agent"
