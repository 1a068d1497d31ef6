"""What an agent says and how it is told: an assistant's prompt and greeting for one call.

`{{name}}` placeholders are filled from the call's metadata when the call is placed or
answered. A placeholder with no value is an error (`MissingPlaceholders`), never a
silent blank in the middle of a sentence. Placeholders multiply what they are filled
with, so the filled length is known (and capped) before anything is built.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import InputTooLarge, MissingPlaceholders
from gateway.providers.base import LLM, ChatMessage, LLMEvent, TextDelta

_PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*}}")


def placeholders(template: str) -> list[str]:
    """The distinct placeholder names of `template`, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(template)))


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with every `{{name}}` replaced; `MissingPlaceholders` names what is absent."""
    missing = [name for name in placeholders(template) if name not in values]
    if missing:
        raise MissingPlaceholders(missing)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def filled_length(template: str, values: Mapping[str, str]) -> int:
    """The length `fill(template, values)` would have, without building it."""
    length = len(template)
    for match in _PLACEHOLDER.finditer(template):
        length += len(values.get(match.group(1), "")) - len(match.group(0))
    return length


@dataclass(frozen=True, slots=True)
class Persona:
    """The filled system prompt and greeting of one call."""

    system_prompt: str
    greeting: str

    @classmethod
    def for_call(
        cls,
        *,
        system_prompt: str,
        greeting: str,
        values: Mapping[str, str],
        max_chars: int | None = None,
        also: Sequence[str] = (),
    ) -> Persona:
        """Fill both templates, reporting every missing name at once (of `also` too: other
        lines of the call, filled later); `InputTooLarge` if either would be longer than
        `max_chars` once filled (nothing is built then)."""
        every = "\n".join((system_prompt, greeting, *also))
        missing = [name for name in placeholders(every) if name not in values]
        if missing:
            raise MissingPlaceholders(missing)
        if max_chars is not None:
            for what, template in (("system_prompt", system_prompt), ("greeting", greeting)):
                length = filled_length(template, values)
                if length > max_chars:
                    raise InputTooLarge(
                        ["body", "metadata"],
                        f"the assistant's {what} filled with this call's metadata would be "
                        f"{length} characters (at most {max_chars})",
                    )
        return cls(fill(system_prompt, values), fill(greeting, values))


class PersonaLLM:
    """An `LLM` speaking as a persona: it says the greeting itself, then lets `inner` answer
    with the persona's system prompt in front of the conversation."""

    def __init__(self, inner: LLM, persona: Persona) -> None:
        self._inner = inner
        self._persona = persona
        self.name = inner.name

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        """The greeting when the caller has said nothing yet, else the inner model's reply."""
        if not any(m.role == "user" for m in history):
            if self._persona.greeting:
                yield TextDelta(self._persona.greeting)
            return
        prompt = ChatMessage(role="system", content=self._persona.system_prompt)
        conversation = [prompt, *(m for m in history if m.role != "system")]
        async for event in self._inner.respond(conversation, call_id=call_id):
            yield event
