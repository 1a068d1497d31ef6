"""Placeholders, the persona wrapper around any LLM, and per-assistant provider settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest

from gateway.call.persona import (
    MissingPlaceholders,
    Persona,
    PersonaLLM,
    fill,
    filled_length,
    placeholders,
)
from gateway.errors import InputTooLarge
from gateway.providers.base import ChatMessage, LLMEvent, TextDelta
from gateway.providers.catalog import settings_for
from gateway.settings import Settings
from storage import AssistantConfig


def test_placeholders_fill_or_name_what_is_missing() -> None:
    template = "Hi {{ name }}, order {{order}} for {{name}}."
    assert placeholders(template) == ["name", "order"]
    assert fill(template, {"name": "Dana", "order": "A-1"}) == "Hi Dana, order A-1 for Dana."
    assert fill("no placeholders {here}", {}) == "no placeholders {here}"
    with pytest.raises(MissingPlaceholders) as caught:
        Persona.for_call(system_prompt="{{a}} {{b}}", greeting="{{c}} {{a}}", values={"b": "x"})
    assert caught.value.names == ["a", "c"]


class _Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Sequence[ChatMessage]] = []

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        self.seen.append(list(history))
        yield TextDelta("ok")


async def _text(llm: PersonaLLM, history: list[ChatMessage]) -> str:
    parts = [e.text async for e in llm.respond(history, call_id="c") if isinstance(e, TextDelta)]
    return "".join(parts)


async def test_persona_greets_then_puts_its_prompt_first() -> None:
    inner = _Recorder()
    llm = PersonaLLM(inner, Persona(system_prompt="Be Acme.", greeting="Hello Dana."))
    assert await _text(llm, []) == "Hello Dana."
    assert inner.seen == []  # the greeting needs no model round trip
    history = [
        ChatMessage(role="assistant", content="Hello Dana."),
        ChatMessage(role="user", content="Hi"),
    ]
    assert await _text(llm, history) == "ok"
    assert inner.seen[0][0] == ChatMessage(role="system", content="Be Acme.")
    assert inner.seen[0][1:] == history
    silent = PersonaLLM(inner, Persona(system_prompt="x", greeting=""))
    assert await _text(silent, []) == ""


def test_assistant_choices_lay_over_the_gateway_settings() -> None:
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    plain = AssistantConfig(name="a", system_prompt="p")
    assert settings_for(base, plain) is base
    custom = settings_for(
        base,
        plain.model_copy(
            update={"tts_provider": "local", "llm_model": "gpt-x", "voice": "v1", "language": "de"}
        ),
    )
    assert custom.tts_provider == "local" and custom.openai_model == "gpt-x"
    assert custom.cartesia_voice == "v1" and custom.deepgram_language == "de"
    assert custom.stt_provider == base.stt_provider
    cloud = settings_for(base, plain.model_copy(update={"stt_provider": "cloud"}))
    assert cloud.stt_provider == "deepgram"


def test_a_filled_persona_over_its_cap_is_refused_before_it_is_built() -> None:
    template = "Dear {{name}}. " * 1000
    assert filled_length(template, {"name": "Dana"}) == len(fill(template, {"name": "Dana"}))
    with pytest.raises(InputTooLarge) as refused:
        Persona.for_call(
            system_prompt=template, greeting="Hi", values={"name": "x" * 100}, max_chars=40_000
        )
    assert refused.value.loc == ["body", "metadata"]
    assert "system_prompt" in str(refused.value)
    ok = Persona.for_call(
        system_prompt=template, greeting="Hi", values={"name": "Dana"}, max_chars=40_000
    )
    assert ok.system_prompt.startswith("Dear Dana.")
