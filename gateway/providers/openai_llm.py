"""The agent on OpenAI's streaming chat completions (any OpenAI-compatible base URL).

Text deltas stream out as they arrive, so the first sentence reaches TTS before the model
has finished. Tool calls stream as argument fragments and are acted on once complete;
the built-in `end_call` tool ends the call after the reply is spoken.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage, HangUp, LLMEvent, TextDelta

log = logging.getLogger(__name__)

END_CALL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "end_call",
        "description": "Hang up once the caller has nothing more to ask or says goodbye.",
        "parameters": {
            "type": "object",
            "properties": {"reason": {"type": "string", "description": "why the call ends"}},
            "required": [],
        },
    },
}


@dataclass(slots=True)
class _PendingToolCall:
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


class OpenAIChatLLM:
    """`LLM` on `chat.completions` with `stream=True`; the greeting is spoken as configured."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        system_prompt: str,
        greeting: str,
        base_url: str | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )
        self._model = model
        self._system_prompt = system_prompt
        self._greeting = greeting
        self.usage = TokenUsage()

    async def aclose(self) -> None:
        """Close the HTTP connections of the client."""
        await self._client.close()

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        """Stream the model's reply; `HangUp` follows the text if it called `end_call`."""
        if not any(m.role == "user" for m in history):
            yield TextDelta(self._greeting)
            return
        messages: list[dict[str, str]] = [{"role": "system", "content": self._system_prompt}]
        messages += [{"role": m.role, "content": m.content} for m in history]
        tool_calls: dict[int, _PendingToolCall] = {}
        try:
            stream = await self._client.chat.completions.create(
                model=self._model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                tools=[cast(ChatCompletionFunctionToolParam, END_CALL_TOOL)],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    self.usage.prompt_tokens += chunk.usage.prompt_tokens
                    self.usage.completion_tokens += chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        pending = tool_calls.setdefault(call.index, _PendingToolCall())
                        if call.function is not None:
                            pending.name += call.function.name or ""
                            pending.arguments.append(call.function.arguments or "")
        except openai.APIStatusError as exc:
            raise ProviderError(str(exc), provider=self.name, status=exc.status_code) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ProviderError(str(exc), provider=self.name) from exc
        for tool in tool_calls.values():
            if tool.name == "end_call":
                reason = _argument(tool, "reason") or "agent-ended"
                log.info("agent ends the call", extra={"reason": reason})
                yield HangUp(reason="agent-ended")
            else:
                log.warning("unknown tool call ignored", extra={"tool": tool.name})


def _argument(call: _PendingToolCall, key: str) -> str | None:
    try:
        parsed = json.loads("".join(call.arguments) or "{}")
    except json.JSONDecodeError:
        return None
    value = parsed.get(key) if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None
