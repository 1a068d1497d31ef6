"""The agent on OpenAI's streaming chat completions (any OpenAI-compatible base URL).

Text deltas stream out as they arrive, so the first sentence reaches TTS before the model
has finished. Tool calls stream as argument fragments and are acted on once complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream

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

SEND_DTMF_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "send_dtmf",
        "description": "Press phone keys, e.g. to choose an option in an automated menu.",
        "parameters": {
            "type": "object",
            "properties": {
                "digits": {"type": "string", "pattern": "^[0-9*#A-D]{1,32}$"},
            },
            "required": ["digits"],
        },
    },
}

_DTMF = re.compile(r"^[0-9*#A-D]{1,32}$")
_MAX_TOOL_ROUNDS = 4
_MAX_TOOL_RESULT_CHARS = 4000


def transfer_tool(targets: Sequence[str]) -> dict[str, Any]:
    """The `transfer_call` tool, limited to the configured destinations."""
    return {
        "type": "function",
        "function": {
            "name": "transfer_call",
            "description": "Transfer the caller to a person or another line.",
            "parameters": {
                "type": "object",
                "properties": {"to": {"type": "string", "enum": list(targets)}},
                "required": ["to"],
            },
        },
    }


@dataclass(frozen=True, slots=True)
class HttpTool:
    """An assistant-defined tool: the model's arguments are POSTed as JSON to `url`."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    url: str
    timeout_s: float = 5.0
    headers: Mapping[str, str] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(slots=True)
class _PendingToolCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def args(self) -> dict[str, Any]:
        try:
            parsed = json.loads("".join(self.arguments) or "{}")
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


def _text(value: object) -> str:
    """`value` if it is a string (or absent); a chunk with anything else is malformed."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"a string was expected, not {type(value).__name__}")
    return value


def _chunk_events(
    chunk: object, calls: dict[int, _PendingToolCall], model: str
) -> Iterator[LLMEvent]:
    """The text and usage of one `chat.completion.chunk`; tool-call fragments go into
    `calls`. Raises `ProviderError` on a chunk not shaped like one."""
    try:
        if not isinstance(chunk, dict):
            raise TypeError("not an object")
        if "choices" not in chunk and "usage" not in chunk:
            # e.g. `{"object": "error", "message": ...}` from some compatible servers:
            # taken as an empty chunk, the reply would end cut short without a word.
            raise KeyError("choices")
        usage = chunk.get("usage")
        if usage:
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            yield Usage(int(prompt or 0), int(completion or 0), model)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = _text(delta.get("content"))
            if content:
                yield TextDelta(content)
            for call in delta.get("tool_calls") or ():
                index = int(call["index"])
                pending = calls.setdefault(index, _PendingToolCall())
                pending.id = pending.id or _text(call.get("id")) or f"call_{index}"
                function = call.get("function")
                if function is not None:
                    pending.name += _text(function.get("name"))
                    pending.arguments.append(_text(function.get("arguments")))
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ProviderError(
            f"malformed chat.completion.chunk ({exc!r})", provider=OpenAIChatLLM.name
        ) from exc


class OpenAIChatLLM:
    """`LLM` on `chat.completions` with `stream=True`; the greeting is spoken as configured.

    Built-in tools become call actions (`end_call`, `send_dtmf`, and `transfer_call` when
    transfer targets are configured). Assistant HTTP tools are called by the gateway, with
    a timeout, and their answer goes back to the model, which then goes on speaking.
    """

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
        http_tools: Sequence[HttpTool] = (),
        transfer_targets: Sequence[str] = (),
    ) -> None:
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )
        self._model = model
        self._system_prompt = system_prompt
        self._greeting = greeting
        self._http_tools = {tool.name: tool for tool in http_tools}
        self._transfer_targets = tuple(transfer_targets)
        self._tools = [END_CALL_TOOL, SEND_DTMF_TOOL]
        if self._transfer_targets:
            self._tools.append(transfer_tool(self._transfer_targets))
        self._tools += [tool.schema() for tool in http_tools]
        self._http = httpx.AsyncClient(follow_redirects=False)

    async def aclose(self) -> None:
        """Close the HTTP connections of the client."""
        await self._client.close()
        await self._http.aclose()

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        """Stream the model's reply; call actions follow the text that goes with them."""
        if not any(m.role == "user" for m in history):
            yield TextDelta(self._greeting)
            return
        # A system message at the head of the history (an assistant's persona) replaces ours.
        system = history[0].content if history[0].role == "system" else self._system_prompt
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        messages += [{"role": m.role, "content": m.content} for m in history if m.role != "system"]
        for _ in range(_MAX_TOOL_ROUNDS):
            calls: dict[int, _PendingToolCall] = {}
            text: list[str] = []
            # Closed at once when the reply is dropped (a barge-in), not when collected.
            async with contextlib.aclosing(self._stream(messages, calls)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                    yield event
            if not calls:
                return
            results: list[str] = []
            needs_answer = False
            for call in calls.values():
                result, action = await self._run_tool(call)
                results.append(result)
                if action is not None:
                    yield action
                needs_answer = needs_answer or call.name in self._http_tools
            if not needs_answer:
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": "".join(text) or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": "".join(c.arguments)},
                        }
                        for c in calls.values()
                    ],
                }
            )
            for call, result in zip(calls.values(), results, strict=True):
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        log.warning("tool rounds exhausted", extra={"rounds": _MAX_TOOL_ROUNDS})

    async def _stream(
        self, messages: list[dict[str, Any]], calls: dict[int, _PendingToolCall]
    ) -> AsyncGenerator[LLMEvent, None]:
        try:
            # Plain JSON both ways: `chat.completions.create` first walks the request through
            # its typed schema (2.8 ms of CPU with 13 messages, 44 % of what a reply cost)
            # and builds a model object of every chunk (about 0.2 ms each); the SDK still
            # sends (with the API key only, as `create` does), maps errors and parses events.
            stream = await self._client.post(
                "/chat/completions",
                body={
                    "model": self._model,
                    "messages": messages,
                    "tools": self._tools,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
                cast_to=object,
                options={"security": {"bearer_auth": True}},
                stream=True,
                stream_cls=AsyncStream[object],
            )
            async with stream:  # the response is released however the reading ends
                async for chunk in stream:
                    for event in _chunk_events(chunk, calls, self._model):
                        yield event
        except openai.APIStatusError as exc:
            raise ProviderError(str(exc), provider=self.name, status=exc.status_code) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise ProviderError(str(exc), provider=self.name) from exc
        except openai.APIError as exc:  # an error event in the stream
            raise ProviderError(str(exc), provider=self.name) from exc
        except ValueError as exc:  # an event whose data is not JSON
            raise ProviderError(
                f"malformed chat.completion.chunk ({exc!r})", provider=self.name
            ) from exc

    async def _run_tool(self, call: _PendingToolCall) -> tuple[str, LLMEvent | None]:
        """Act on one complete tool call: its result for the model and the call action."""
        args = call.args()
        if call.name == "end_call":
            log.info("agent ends the call", extra={"reason": args.get("reason")})
            return "The call will end after your reply.", HangUp(reason="agent-ended")
        if call.name == "send_dtmf":
            digits = str(args.get("digits", "")).upper()
            if not _DTMF.match(digits):
                return json.dumps({"error": "digits must be 0-9, *, #, A-D"}), None
            return f"Pressed {digits}.", SendDtmf(digits)
        if call.name == "transfer_call":
            to = str(args.get("to", ""))
            if to not in self._transfer_targets:
                log.warning("transfer to an unlisted destination refused", extra={"to": to})
                return json.dumps({"error": "not an allowed destination"}), None
            return f"Transferring to {to}.", TransferCall(to)
        tool = self._http_tools.get(call.name)
        if tool is None:
            log.warning("unknown tool call ignored", extra={"tool": call.name})
            return json.dumps({"error": f"no tool named {call.name}"}), None
        return await self._call_http(tool, args), None

    async def _call_http(self, tool: HttpTool, args: dict[str, Any]) -> str:
        """POST the arguments to the tool's URL; its body (or the error) is the result."""
        try:
            response = await self._http.post(
                tool.url, json=args, headers=dict(tool.headers), timeout=tool.timeout_s
            )
        except httpx.TimeoutException:
            log.warning("tool timed out", extra={"tool": tool.name})
            return json.dumps({"error": f"{tool.name} did not answer in {tool.timeout_s} s"})
        except httpx.HTTPError as exc:
            log.warning("tool failed: %s", exc, extra={"tool": tool.name})
            return json.dumps({"error": f"{tool.name} is unreachable"})
        log.info("tool called", extra={"tool": tool.name, "status": response.status_code})
        if response.status_code >= 400:
            return json.dumps({"error": f"{tool.name} answered HTTP {response.status_code}"})
        return response.text[:_MAX_TOOL_RESULT_CHARS]
