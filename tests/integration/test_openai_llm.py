"""The OpenAI agent through the official `openai` SDK against a local server that speaks
the chat-completions streaming wire protocol (tests/fakes/openai_server.py)."""

from __future__ import annotations

import time

import pytest

from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage, HangUp, LLMEvent, TextDelta, Usage
from gateway.providers.openai_llm import OpenAIChatLLM


def _llm(base_url: str, key: str = "test-openai-key") -> OpenAIChatLLM:
    return OpenAIChatLLM(
        api_key=key,
        base_url=base_url,
        model="fake-model",
        system_prompt="You are a phone agent.",
        greeting="Hello from the model agent.",
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
    assert [e for e in events if isinstance(e, Usage)] == [Usage(12, 5)]


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
