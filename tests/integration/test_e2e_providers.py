"""Whole calls with all three cloud providers configured: the real gateway process drives
the official `deepgram-sdk`, `openai` and `cartesia` SDKs against local servers that speak
each provider's wire protocol (tests/fakes), and the `twilio` SDK against a local server
that answers like Twilio's Calls API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

from .conftest import FakeServer, GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

TRANSFER_TO = "+15550001111"


@pytest.fixture(scope="module")
def cloud_gateway(
    mongo_url: str,
    openai_base_url: str,
    deepgram_fake: FakeServer,
    cartesia_fake: FakeServer,
    twilio_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    env = {
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_base_url,
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "DEEPGRAM_BASE_URL": deepgram_fake.url.replace("http://", "ws://"),
        "CARTESIA_API_KEY": "test-cartesia-key",
        "CARTESIA_BASE_URL": cartesia_fake.url,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "ASSISTANT_TRANSFER_TARGETS": f'["{TRANSFER_TO}"]',
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gw-cloud"), env) as process:
        twilio_fake.control(auth_token=process.auth_token)
        yield process


@pytest.fixture
def fakes(deepgram_fake: FakeServer, cartesia_fake: FakeServer) -> Iterator[None]:
    deepgram_fake.reset()
    cartesia_fake.reset()
    yield


async def _stored(gateway: GatewayProcess, http: httpx.AsyncClient, call_id: str) -> Any:
    response = await http.get(f"/calls/{call_id}", headers={"x-api-key": gateway.api_key})
    return response.json()


def _new_call(gateway: GatewayProcess) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )


async def _turn(call: SimulatedTwilioCall, text: str) -> None:
    call.say(espeak_mulaw(text))
    await call.wait_said()
    await call.wait_agent_audio(within_s=15)
    await call.wait_agent_silent()


@pytest.mark.usefixtures("fakes")
async def test_a_call_through_deepgram_openai_and_cartesia_with_barge_in(
    cloud_gateway: GatewayProcess, deepgram_fake: FakeServer, cartesia_fake: FakeServer
) -> None:
    gateway = cloud_gateway
    deepgram_fake.control(
        utterances=["What are your opening hours?", "Tell me something long.", "Stop.", "Bye."]
    )
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _new_call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            await _turn(call, "What are your opening hours?")
            # The long answer streams from the LLM (50 ms a token) into one Cartesia
            # context; the caller talks over it while both are still going.
            call.say(espeak_mulaw("Tell me something long."))
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await asyncio.sleep(1.5)
            call.say(espeak_mulaw("Stop."))
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)  # the answer to "Stop."
            await call.wait_agent_silent()
            call.say(espeak_mulaw("Bye."))
            await call.wait_closed(within_s=30)  # the model called end_call
            assert call.log.close_code == 1000
        finally:
            await call.aclose()
        stored = await _stored(gateway, http, str(call.call_id))
        metrics = (await http.get("/metrics")).text

    turns = [(t["speaker"], t["text"], t["interrupted"]) for t in stored["transcript"]]
    assert turns[0][:2] == (
        "agent",
        "Hello! You are talking to the demo assistant. How can I help you today?",
    )
    assert turns[1][:2] == ("caller", "What are your opening hours?")
    assert turns[2][:2] == ("agent", "You said: What are your opening hours?. Anything else?")
    assert turns[3][:2] == ("caller", "Tell me something long.")
    speaker, heard, interrupted = turns[4]
    assert speaker == "agent" and interrupted
    assert 0 < len(heard) < len("This is a long answer that goes on. " * 12)
    assert turns[5][:2] == ("caller", "Stop.")
    assert turns[-1][:2] == ("agent", "Goodbye, thanks for calling.")
    assert stored["end_reason"] == "agent-ended" and stored["status"] == "completed"

    # Latency: every answering turn has all four stages, in order.
    answers = [t for t in stored["transcript"] if t["speaker"] == "agent" and t["latency"]]
    assert len(answers) >= 3
    for turn in answers:
        stages = turn["latency"]
        assert list(stages) == ["stt_final", "llm_first_token", "tts_first_byte", "first_frame_out"]
        assert list(stages.values()) == sorted(stages.values())
    assert set(stored["latency_p50"]) == set(stored["latency_p95"]) == set(answers[0]["latency"])
    assert stored["usage"]["prompt_tokens"] >= 12 * 3
    assert re.search(r'turn_latency_ms_count\{stage="first_frame_out"\} [1-9]', metrics)

    # Deepgram: mu-law 8 kHz straight from Twilio, one Finalize per caller turn, and
    # CloseStream at hang-up.
    dg_log = deepgram_fake.log()
    [opened] = [e for e in dg_log if e["kind"] == "open"]
    query = opened["query"]
    assert isinstance(query, dict)
    assert (query["encoding"], query["sample_rate"]) == ("mulaw", "8000")
    assert opened["auth"] == "Token test-deepgram-key"
    sent = [e["data"]["type"] for e in dg_log if e["kind"] == "json"]  # type: ignore[index]
    assert sent.count("Finalize") >= 4 and sent[-1] == "CloseStream"

    # Cartesia: one context per turn, sentences as continuations with flushes, 8 kHz
    # PCM, and the interrupted turn's context cancelled mid-stream, after which no more
    # of that turn's text was sent.
    requests = [e["data"] for e in cartesia_fake.log() if e["kind"] == "json"]
    assert all(
        r["output_format"] == {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000}
        for r in requests
        if "transcript" in r
    )
    [cancel] = [r for r in requests if r.get("cancel")]
    long_turn = [r for r in requests if r.get("context_id") == cancel["context_id"]]
    assert long_turn[-1] is cancel
    said = [r["transcript"] for r in long_turn if r.get("transcript")]
    assert 1 <= len(said) < 12  # the LLM was stopped before its answer was complete
    assert not any(r.get("continue") is False for r in long_turn), [
        (r.get("transcript"), r.get("continue"), r.get("flush")) for r in long_turn
    ]


@pytest.mark.usefixtures("fakes")
async def test_provider_sockets_that_drop_mid_call(
    cloud_gateway: GatewayProcess, deepgram_fake: FakeServer, cartesia_fake: FakeServer
) -> None:
    gateway = cloud_gateway
    deepgram_fake.control(
        utterances=["What are your opening hours?", "Anything else?", "Bye."],
        drop_after_finals=1,
    )
    cartesia_fake.control(drop_on_text="opening hours")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _new_call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            # Cartesia drops while speaking the answer: the caller hears an apology
            # (from the local fallback voice), not silence, and the call goes on.
            await _turn(call, "What are your opening hours?")
            # Deepgram dropped after that turn's final: the stream reconnects.
            await _turn(call, "Anything else?")
            call.say(espeak_mulaw("Bye."))
            await call.wait_closed(within_s=30)
        finally:
            await call.aclose()
        stored = await _stored(gateway, http, str(call.call_id))
        metrics = (await http.get("/metrics")).text

    turns = [(t["speaker"], t["text"]) for t in stored["transcript"]]
    assert turns[1] == ("caller", "What are your opening hours?")
    assert turns[2][0] == "agent"
    assert turns[2][1].endswith("Sorry, I am having trouble right now. Could you say that again?")
    assert turns[3] == ("caller", "Anything else?")
    assert turns[4] == ("agent", "You said: Anything else?. Anything else?")
    assert turns[-1] == ("agent", "Goodbye, thanks for calling.")
    assert stored["end_reason"] == "agent-ended"
    assert re.search(r'provider_failures_total\{provider="cartesia"\} [1-9]', metrics)
    assert re.search(r"stt_reconnects_total [1-9]", metrics)
    assert len([e for e in deepgram_fake.log() if e["kind"] == "open"]) == 2


@pytest.mark.usefixtures("fakes")
async def test_transfer_tool_dials_through_twilio_rest(
    cloud_gateway: GatewayProcess, deepgram_fake: FakeServer, twilio_fake: FakeServer
) -> None:
    gateway = cloud_gateway
    deepgram_fake.control(utterances=["Please transfer me to a person."])
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = _new_call(gateway)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            call.say(espeak_mulaw("Please transfer me to a person."))
            await call.wait_closed(within_s=30)
        finally:
            await call.aclose()
        stored = await _stored(gateway, http, str(call.call_id))
    updates = [e for e in twilio_fake.log() if str(e["path"]).endswith(f"{call.call_sid}.json")]
    assert len(updates) == 1
    form = updates[0]["form"]
    assert isinstance(form, dict)
    assert f"<Dial>{TRANSFER_TO}</Dial>" in form["Twiml"]
    assert stored["transcript"][-1]["text"] == "Transferring you now."
    assert stored["end_reason"] == "transferred"
