"""A local server that speaks OpenAI's `POST /v1/chat/completions` streaming wire protocol.

Server-sent events of `chat.completion.chunk` objects, tool calls as argument fragments,
a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`. The reply
is scripted from the last user message: "bye" -> a goodbye and an `end_call` tool call;
"fail" -> HTTP 500; "slow" -> tokens 50 ms apart; anything else -> an echo.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}\n\n".encode()


async def _events(said: str, include_usage: bool) -> AsyncIterator[bytes]:
    yield _sse(_chunk({"role": "assistant", "content": ""}))
    delay = 0.05 if "slow" in said else 0.0
    if "bye" in said:
        words, finish = ["Goodbye,", " thanks", " for", " calling."], "tool_calls"
    else:
        words, finish = ["You", " said:", f" {said}.", " Anything", " else?"], "stop"
    for word in words:
        if delay:
            await asyncio.sleep(delay)
        yield _sse(_chunk({"content": word}))
    if finish == "tool_calls":
        first = {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": "end_call", "arguments": ""}}  # fmt: skip
        yield _sse(_chunk({"tool_calls": [first]}))
        for piece in ('{"rea', 'son": "caller', ' said bye"}'):
            yield _sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    yield _sse(_chunk({}, finish))
    if include_usage:
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": len(words),
            "total_tokens": 12 + len(words),
        }
        yield _sse({**_chunk({}), "choices": [], "usage": usage})
    yield _sse("[DONE]")


async def chat_completions(request: Request) -> Response:
    if request.headers.get("authorization") != "Bearer test-openai-key":
        return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
    body = await request.json()
    said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if "fail" in said:
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
    if not body.get("stream"):
        return JSONResponse({"error": {"message": "only stream=true here"}}, 400)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(_events(said, include_usage), media_type="text/event-stream")


app = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])
