"""A local server that speaks Cartesia's TTS WebSocket (`/tts/websocket`).

Auth is `Authorization: Bearer <key>`, `X-API-Key` or `?api_key=`, with a
`cartesia-version` header or query (HTTP 401 / 400 before the upgrade otherwise).
Generation requests carry `context_id`, `model_id`, `transcript`, `voice`,
`output_format` (raw `pcm_s16le` / `pcm_f32le` / `pcm_mulaw` / `pcm_alaw`) and
`continue`; `{context_id, cancel: true}` cancels a context. Answers per context:
`chunk` messages (base64 audio, `flush_id`), `flush_done` after a request with
`flush: true` (the next transcript gets the next flush id, starting at 1), `done` after
`continue: false`, and `error` for invalid requests. Contexts run concurrently.

The audio is a deterministic tone, `ms_per_char` per character of transcript.
`drop_on_text: "..."` makes the server send one chunk of the transcript that contains
it and then close the socket with 1011 (once). `junk_first: true` makes each new socket
first send two text messages that are not JSON objects (a client must skip them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from audio.codec import ulaw_encode

_state: dict[str, Any] = {}
_log: list[dict[str, Any]] = []
_connections = 0
_ENCODINGS = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def _defaults() -> dict[str, Any]:
    return {
        "api_key": "test-cartesia-key",
        "ms_per_char": 45,
        "chunk_ms": 40,
        "chunk_interval_ms": 0,
        "first_chunk_delay_ms": 0,
        "drop_on_text": None,
        "junk_first": False,
    }


_state.update(_defaults())


class _Dropped(Exception):
    pass


def _encode(pcm: np.ndarray, encoding: str) -> bytes:
    if encoding == "pcm_f32le":
        return (pcm / 32768.0).astype("<f4").tobytes()
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        return ulaw_encode(pcm)  # a-law is not needed by the tests; same size per sample
    return pcm.astype("<i2").tobytes()


class _Context:
    def __init__(self, conn: _Connection, context_id: str) -> None:
        self.conn = conn
        self.id = context_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.flush_id = 1
        self.closed = False
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        try:
            while True:
                request = await self.queue.get()
                text = request.get("transcript", "").strip()
                if text:
                    await self.speak(text, request["output_format"])
                if request.get("flush"):
                    await self.conn.send(
                        {"type": "flush_done", "context_id": self.id, "done": False,
                         "flush_done": True, "flush_id": self.flush_id, "status_code": 206}
                    )  # fmt: skip
                    self.flush_id += 1
                if request.get("continue") is False:
                    await self.conn.send(
                        {"type": "done", "context_id": self.id, "done": True, "status_code": 206}
                    )
                    return
        except _Dropped:
            await self.conn.drop()

    async def speak(self, text: str, fmt: dict[str, Any]) -> None:
        rate = int(fmt["sample_rate"])
        n = int(rate * _state["ms_per_char"] * len(text) / 1000)
        t = np.arange(n) / rate
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
        pcm = (
            6000 * envelope * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 440 * t))
        ).astype(np.int16)
        per_chunk = max(1, rate * int(_state["chunk_ms"]) // 1000)
        drop = _state.get("drop_on_text")
        dropping = bool(drop) and drop in text
        if _state["first_chunk_delay_ms"]:
            await asyncio.sleep(_state["first_chunk_delay_ms"] / 1000)
        for offset in range(0, n, per_chunk):
            data = _encode(pcm[offset : offset + per_chunk], fmt["encoding"])
            await self.conn.send(
                {"type": "chunk", "context_id": self.id, "data": base64.b64encode(data).decode(),
                 "done": False, "status_code": 206, "step_time": 1.0, "flush_id": self.flush_id}
            )  # fmt: skip
            if dropping:
                _state["drop_on_text"] = None
                raise _Dropped
            if _state["chunk_interval_ms"]:
                await asyncio.sleep(_state["chunk_interval_ms"] / 1000)
            else:
                await asyncio.sleep(0)


class _Connection:
    def __init__(self, ws: WebSocket, number: int) -> None:
        self.ws = ws
        self.number = number
        self.contexts: dict[str, _Context] = {}
        self.lock = asyncio.Lock()
        self.dropped = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.dropped:
            raise _Dropped
        async with self.lock:
            await self.ws.send_text(json.dumps(message))

    async def drop(self) -> None:
        if not self.dropped:
            self.dropped = True
            with contextlib.suppress(RuntimeError):
                await self.ws.close(code=1011, reason="fake drop")

    async def error(self, context_id: str | None, message: str) -> None:
        await self.send(
            {"type": "error", "context_id": context_id, "status_code": 400, "done": True,
             "title": "Invalid request", "message": message, "error_code": "invalid_request"}
        )  # fmt: skip

    async def handle(self, body: dict[str, Any]) -> None:
        context_id = body.get("context_id")
        if body.get("cancel"):
            context = self.contexts.pop(str(context_id), None)
            if context is not None:
                context.task.cancel()
            return
        for key in ("context_id", "model_id", "transcript", "voice", "output_format"):
            if key not in body:
                await self.error(context_id, f"missing {key}")
                return
        fmt = body["output_format"]
        if (
            fmt.get("container") != "raw"
            or fmt.get("encoding") not in _ENCODINGS
            or fmt.get("sample_rate") not in _RATES
        ):
            await self.error(context_id, "unsupported output_format")
            return
        context = self.contexts.get(context_id)
        if context is not None and context.closed:
            await self.error(context_id, "context already closed with continue: false")
            return
        if context is None:
            context = self.contexts[context_id] = _Context(self, context_id)
        if body.get("continue") is False:
            context.closed = True
        context.queue.put_nowait(body)


async def tts_websocket(ws: WebSocket) -> None:
    global _connections
    headers = ws.headers
    auth = headers.get("authorization", "")
    key = (
        auth.removeprefix("Bearer ")
        if auth.startswith("Bearer ")
        else headers.get("x-api-key") or ws.query_params.get("api_key")
    )
    version = headers.get("cartesia-version") or ws.query_params.get("cartesia_version")
    _connections += 1
    number = _connections
    _log.append(
        {
            "conn": number,
            "kind": "open",
            "path": ws.url.path,
            "query": dict(ws.query_params),
            "auth": auth,
            "version": version,
            "extensions": headers.get("sec-websocket-extensions"),  # what the client offered
        }
    )
    if key != _state["api_key"]:
        await ws.send_denial_response(JSONResponse({"error": "Invalid API key"}, 401))
        return
    if not version:
        await ws.send_denial_response(JSONResponse({"error": "cartesia-version is required"}, 400))
        return
    await ws.accept()
    if _state["junk_first"]:
        await ws.send_text("not json")
        await ws.send_text("[1, 2]")
    conn = _Connection(ws, number)
    try:
        while not conn.dropped:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            body = json.loads(message.get("text") or "{}")
            _log.append({"conn": number, "kind": "json", "data": body})
            await conn.handle(body)
    except (WebSocketDisconnect, _Dropped):
        pass
    finally:
        for context in conn.contexts.values():
            context.task.cancel()
        _log.append({"conn": number, "kind": "close"})


async def control(request: Request) -> Response:
    _state.update(await request.json())
    return JSONResponse({"ok": True})


async def control_log(request: Request) -> Response:
    return JSONResponse(_log)


async def control_reset(request: Request) -> Response:
    _log.clear()
    _state.clear()
    _state.update(_defaults())
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        WebSocketRoute("/tts/websocket", tts_websocket),
        Route("/control", control, methods=["POST"]),
        Route("/control/log", control_log, methods=["GET"]),
        Route("/control/reset", control_reset, methods=["POST"]),
    ]
)
