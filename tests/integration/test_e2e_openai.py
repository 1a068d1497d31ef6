"""A whole call with the agent on the OpenAI provider: the real gateway process, the
official `openai` SDK, and a local server speaking the chat-completions stream protocol."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def openai_gateway(
    mongo_url: str, openai_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = {"OPENAI_API_KEY": "test-openai-key", "OPENAI_BASE_URL": openai_base_url}
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gw-openai"), env) as process:
        yield process


async def test_model_answers_and_ends_the_call_with_its_tool(
    openai_gateway: GatewayProcess,
) -> None:
    gateway = openai_gateway
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
        )
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            call.say(espeak_mulaw("What are your opening hours?"))
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            call.say(espeak_mulaw("Thank you, goodbye."))
            await call.wait_closed(within_s=30)  # the model called end_call
            assert call.log.close_code == 1000
        finally:
            await call.aclose()
        stored = (
            await http.get(f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key})
        ).json()
    turns = [(t["speaker"], t["text"]) for t in stored["transcript"]]
    assert turns[0][0] == "agent" and turns[0][1].startswith("Hello")
    assert turns[1] == ("caller", "what are your opening hours")
    assert turns[2] == ("agent", "You said: what are your opening hours. Anything else?")
    assert turns[-1] == ("agent", "Goodbye, thanks for calling.")
    assert stored["end_reason"] == "agent-ended"
    assert stored["status"] == "completed"
