"""A local server that speaks OpenAI's `POST /v1/chat/completions` streaming wire protocol.

Server-sent events of `chat.completion.chunk` objects, tool calls as argument fragments,
a usage chunk when `stream_options.include_usage` is set, then `data: [DONE]`. The reply
is scripted from the last user message: "bye" -> a goodbye and an `end_call` tool call;
"transfer" -> `transfer_call`; "press" -> `send_dtmf`; "weather" -> the assistant's
`get_weather` HTTP tool, and once the tool's result is in the messages, a reply quoting
it; "long" -> a long answer, tokens 50 ms apart; "fail" -> HTTP 500; "slow" -> tokens
50 ms apart; a reply that breaks midway, each one word and then: "break off" -> an error
event in the stream (as OpenAI sends one when a reply fails midway), "garble" -> a chunk
whose `choices` is not a list, "scramble" -> an event whose data is not JSON, "refuse
midway" -> an error object in place of a chunk (as some compatible servers send), "odd
content" -> a chunk whose `content` is a list; anything else -> an echo.

Non-streaming requests (`stream` absent or false: post-call analysis) get one
`chat.completion` object with `usage`, scripted by a marker anywhere in the messages:
"fake:invalid-first" -> data that breaks the test schema, then (once the request carries
the model's earlier answer, i.e. on the retry) a valid answer; "fake:always-invalid" ->
invalid data every time; "fake:garbage" -> text that is not JSON; "fake:fail" -> HTTP
500; "fake:fail-first" -> HTTP 500 to the first such request, a valid answer when the same
request is sent again (a model briefly down); "fake:refuse" -> HTTP 400;
"fake:hold-first" -> the first such request is held until its client goes away (a gateway
killed while it waits for the model), the next ones get a valid answer; otherwise
a valid answer: `summary` quoting what the caller said, `data` matching
`{"order_id": string, "resolved": boolean}`, `success` true. `GET /control/completions`
lists the non-streaming requests received (newest last).

`GET /control/log` lists each request's `model` and the `usage` the server sent for it
(what a bill would count); `POST /control/reset` clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_log: list[dict[str, Any]] = []


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


def _script(
    said: str, messages: list[dict[str, Any]], tools: list[str]
) -> tuple[list[str], dict[str, Any] | None]:
    """The reply's words and the tool call (name, arguments) it ends with, if any."""
    last = messages[-1] if messages else {}
    heard = said.lower()
    if last.get("role") == "tool":
        return ["The", " tool", " says:", f" {last.get('content', '')}."], None
    if "bye" in heard:
        return ["Goodbye,", " thanks", " for", " calling."], {
            "name": "end_call",
            "arguments": '{"reason": "caller said bye"}',
        }
    if "transfer" in heard and "transfer_call" in tools:
        return ["Transferring", " you", " now."], {
            "name": "transfer_call",
            "arguments": '{"to": "+15550001111"}',
        }
    if "press" in heard:
        return [], {"name": "send_dtmf", "arguments": '{"digits": "12#"}'}
    if "weather" in heard and "get_weather" in tools:
        return ["Let", " me", " check."], {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    if "who are you" in heard:  # shows which system prompt(s) the model was given
        systems = [m["content"] for m in messages if m.get("role") == "system"]
        return [f"{len(systems)} system:", f" {' | '.join(systems)}"], None
    if "long" in heard:
        sentence = [" This", " is", " a", " long", " answer", " that", " goes", " on."]
        return sentence * 12, None
    return ["You", " said:", f" {said}.", " Anything", " else?"], None


# What follows the first word of a reply that breaks midway, by the marker said.
_BREAKS: dict[str, dict[str, Any] | str] = {
    "break off": {"error": {"message": "The server had an error", "type": "server_error"}},
    "garble": {**_chunk({}), "choices": 5},
    "scramble": '{"id": "chatcmpl-fake", "choices": [',
    "refuse midway": {"object": "error", "message": "model overloaded", "code": 503},
    "odd content": _chunk({"content": [{"type": "text", "text": "Hi"}]}),
}


async def _events(body: dict[str, Any], said: str) -> AsyncIterator[bytes]:
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    tools = [t["function"]["name"] for t in body.get("tools") or []]
    yield _sse(_chunk({"role": "assistant", "content": ""}))
    delay = 0.05 if "slow" in said.lower() or "long" in said.lower() else 0.0
    words, tool = _script(said, body["messages"], tools)
    breaks = [bad for marker, bad in _BREAKS.items() if marker in said.lower()]
    if breaks:
        yield _sse(_chunk({"content": "Well,"}))
        yield _sse(breaks[0])
        yield _sse("[DONE]")
        return
    for word in words:
        if delay:
            await asyncio.sleep(delay)
        yield _sse(_chunk({"content": word}))
    if tool is not None:
        first = {"index": 0, "id": "call_1", "type": "function",
                 "function": {"name": tool["name"], "arguments": ""}}  # fmt: skip
        yield _sse(_chunk({"tool_calls": [first]}))
        args = tool["arguments"]
        for piece in (args[:5], args[5:12], args[12:]):
            yield _sse(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    yield _sse(_chunk({}, "tool_calls" if tool else "stop"))
    if include_usage:
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": len(words),
            "total_tokens": 12 + len(words),
        }
        yield _sse({**_chunk({}), "choices": [], "usage": usage})
        _log.append({"model": body.get("model"), "usage": usage})
    yield _sse("[DONE]")


VALID_DATA = {"order_id": "A-17", "resolved": True}
INVALID_DATA = {"order_id": 17}
_completions: list[dict[str, Any]] = []  # non-streaming requests, for /control/log
_held: set[str] = set()  # the texts of the requests held once ("fake:hold-first")
_failed: set[str] = set()  # the texts of the requests failed once ("fake:fail-first")


def _completion(content: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "fake-model",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _analysis(messages: list[dict[str, Any]]) -> Response:
    text = "\n".join(str(m.get("content") or "") for m in messages)
    retry = any(m.get("role") == "assistant" for m in messages)
    if "fake:refuse" in text:
        return JSONResponse({"error": {"message": "bad", "type": "invalid_request_error"}}, 400)
    if "fake:fail" in text and "fake:fail-first" not in text:
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
    if "fake:garbage" in text:
        return JSONResponse(_completion("Sure! The call went well, I think.", messages))
    caller = [
        line.removeprefix("Caller: ") for line in text.splitlines() if line.startswith("Caller: ")
    ]
    invalid = "fake:always-invalid" in text or ("fake:invalid-first" in text and not retry)
    answer = {
        "summary": "The caller said: " + " / ".join(caller),
        "data": INVALID_DATA if invalid else VALID_DATA,
        "success": True,
        "success_reason": "The caller got an answer.",
    }
    return JSONResponse(_completion(json.dumps(answer), messages))


async def chat_completions(request: Request) -> Response:
    if request.headers.get("authorization") != "Bearer test-openai-key":
        return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
    body = await request.json()
    if not body.get("stream"):
        _completions.append(body)
        del _completions[:-200]
        text = json.dumps(body["messages"])
        if "fake:hold-first" in text and text not in _held:
            _held.add(text)
            with contextlib.suppress(TimeoutError):  # the body is read: next comes the disconnect
                async with asyncio.timeout(120):
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
            return JSONResponse({"error": {"message": "held", "type": "server_error"}}, 503)
        if "fake:fail-first" in text and text not in _failed:
            _failed.add(text)
            return JSONResponse({"error": {"message": "down", "type": "server_error"}}, 500)
        return _analysis(body["messages"])
    said = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    if "fail" in said:
        return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
    return StreamingResponse(_events(body, said), media_type="text/event-stream")


async def control_log(request: Request) -> Response:
    return JSONResponse(_log)


async def control_completions(request: Request) -> Response:
    return JSONResponse(_completions)


async def control_reset(request: Request) -> Response:
    _log.clear()
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/control/log", control_log, methods=["GET"]),
        Route("/control/completions", control_completions, methods=["GET"]),
        Route("/control/reset", control_reset, methods=["POST"]),
    ]
)
