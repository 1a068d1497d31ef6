"""The OpenAI agent through the official `openai` SDK against a local server that speaks
the chat-completions streaming wire protocol (tests/fakes/openai_server.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from gateway.call.persona import Persona, PersonaLLM
from gateway.errors import ProviderError
from gateway.providers.base import (
    ChatMessage,
    HangUp,
    LLMEvent,
    SendDtmf,
    TextDelta,
    TransferCall,
    Usage,
)
from gateway.providers.openai_llm import HttpTool, OpenAIChatLLM


def _llm(base_url: str, key: str = "test-openai-key", **tools: Any) -> OpenAIChatLLM:
    return OpenAIChatLLM(
        api_key=key,
        base_url=base_url,
        model="fake-model",
        system_prompt="You are a phone agent.",
        greeting="Hello from the model agent.",
        **tools,
    )


async def _collect(llm: OpenAIChatLLM, said: str | None) -> list[LLMEvent]:
    history = [ChatMessage("assistant", "Hello"), ChatMessage("user", said)] if said else []
    try:
        return [event async for event in llm.respond(history, call_id="c1")]
    finally:
        await llm.aclose()


async def test_greeting_needs_no_request(openai_base_url: str) -> None:
    events = await _collect(_llm("http://127.0.0.1:9/v1"), None)
    assert events == [TextDelta("Hello from the model agent.")]


async def test_text_streams_as_deltas_and_usage_is_counted(openai_base_url: str) -> None:
    llm = _llm(openai_base_url)
    events = await _collect(llm, "what are your hours")
    assert all(isinstance(e, TextDelta | Usage) for e in events)
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "You said: what are your hours. Anything else?"
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage == [Usage(12, 5, "fake-model")]  # with the model it asked for


async def test_streamed_end_call_tool_becomes_hang_up(openai_base_url: str) -> None:
    events = await _collect(_llm(openai_base_url), "ok bye")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Goodbye, thanks for calling."
    assert isinstance(events[-1], HangUp)


async def test_first_token_arrives_before_the_reply_is_complete(openai_base_url: str) -> None:
    llm = _llm(openai_base_url)
    history = [ChatMessage("user", "slow please")]
    started = time.monotonic()
    stamps = [time.monotonic() - started async for _ in llm.respond(history, call_id="c")]
    await llm.aclose()
    assert stamps[-1] - stamps[0] >= 0.15  # tokens 50 ms apart arrive one by one


async def test_server_and_auth_errors_map_to_provider_error(openai_base_url: str) -> None:
    with pytest.raises(ProviderError) as failed:
        await _collect(_llm(openai_base_url), "please fail")
    assert failed.value.status == 500 and failed.value.retryable
    with pytest.raises(ProviderError) as refused:
        await _collect(_llm(openai_base_url, key="wrong"), "hello")
    assert refused.value.status == 401 and not refused.value.retryable
    with pytest.raises(ProviderError) as unreachable:
        await _collect(_llm("http://127.0.0.1:9/v1"), "hello")
    assert unreachable.value.retryable


def _text(events: list[LLMEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.mark.parametrize(
    "said", ["please break off", "garble it", "scramble it", "refuse midway", "odd content"]
)
async def test_a_reply_that_breaks_midway_is_a_provider_error(
    openai_base_url: str, said: str
) -> None:
    """An error event, an event that is not JSON, an error object or a chunk not shaped
    like one, after some text: the text came out and then a `ProviderError` (the call's
    turn handling speaks its fallback), never a reply cut short in silence."""
    llm = _llm(openai_base_url)
    history = [ChatMessage("assistant", "Hello"), ChatMessage("user", said)]
    got: list[LLMEvent] = []
    try:
        with pytest.raises(ProviderError) as caught:
            async for event in llm.respond(history, call_id="c1"):
                got.append(event)
    finally:
        await llm.aclose()
    assert got == [TextDelta("Well,")]
    assert caught.value.provider == "openai"


async def test_transfer_only_to_a_configured_destination(openai_base_url: str) -> None:
    events = await _collect(
        _llm(openai_base_url, transfer_targets=["+15550001111"]), "transfer me please"
    )
    assert _text(events) == "Transferring you now."
    assert events[-1] == TransferCall("+15550001111")
    # Without destinations the tool is not offered at all: the model just answers.
    events = await _collect(_llm(openai_base_url), "transfer me please")
    assert not any(isinstance(e, TransferCall) for e in events)


async def test_send_dtmf_tool_becomes_key_presses(openai_base_url: str) -> None:
    events = await _collect(_llm(openai_base_url), "press one two hash")
    assert [e for e in events if not isinstance(e, Usage)] == [SendDtmf("12#")]


class _WeatherHandler(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    delay_s = 0.0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).received.append({"body": body, "auth": self.headers.get("authorization")})
        time.sleep(type(self).delay_s)
        payload = json.dumps({"forecast": "sunny, 21 C"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def weather_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WeatherHandler)
    _WeatherHandler.received = []
    _WeatherHandler.delay_s = 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/weather"
    finally:
        server.shutdown()
        server.server_close()


def _weather_tool(url: str, timeout_s: float = 2.0) -> HttpTool:
    return HttpTool(
        name="get_weather",
        description="The weather in a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
        url=url,
        timeout_s=timeout_s,
        headers={"authorization": "Bearer tool-secret"},
    )


async def test_http_tool_is_called_and_the_model_speaks_its_answer(
    openai_base_url: str, weather_url: str
) -> None:
    llm = _llm(openai_base_url, http_tools=[_weather_tool(weather_url)])
    events = await _collect(llm, "what is the weather in paris")
    assert _WeatherHandler.received == [{"body": {"city": "Paris"}, "auth": "Bearer tool-secret"}]
    assert _text(events) == 'Let me check.The tool says: {"forecast": "sunny, 21 C"}.'
    usage = [e for e in events if isinstance(e, Usage)]
    assert usage == [Usage(12, 3, "fake-model"), Usage(12, 4, "fake-model")]


async def test_a_slow_http_tool_times_out_and_the_model_hears_so(
    openai_base_url: str, weather_url: str
) -> None:
    _WeatherHandler.delay_s = 1.0
    llm = _llm(openai_base_url, http_tools=[_weather_tool(weather_url, timeout_s=0.2)])
    started = time.monotonic()
    events = await _collect(llm, "what is the weather in paris")
    assert time.monotonic() - started < 1.0
    assert "did not answer in 0.2 s" in _text(events)


async def test_an_assistant_persona_replaces_the_default_prompt(openai_base_url: str) -> None:
    llm = _llm(openai_base_url)
    persona = PersonaLLM(llm, Persona(system_prompt="You are Acme's agent.", greeting="Hi."))
    try:
        history = [ChatMessage(role="user", content="Who are you?")]
        events = [e async for e in persona.respond(history, call_id="c1")]
    finally:
        await llm.aclose()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "1 system: You are Acme's agent."
