"""A local server that speaks Deepgram's live transcription WebSocket (`/v1/listen`).

Auth is `Authorization: Token <key>` (HTTP 401 before the upgrade otherwise). Binary
frames are audio in the `encoding` / `sample_rate` of the query; text frames are the
control messages `KeepAlive`, `Finalize` and `CloseStream`. Answers are the JSON
messages of Deepgram's API: `Results` (interim, then `is_final`; `speech_final` after
`endpointing` ms of silence; `from_finalize` after `Finalize`), `SpeechStarted`
(with `vad_events=true`), `UtteranceEnd` (with `utterance_end_ms`) and `Metadata` at
`CloseStream`, then a 1000 close. No audio or KeepAlive for `idle_timeout_s` closes
with 1011 (Deepgram's NET-0001).

Recognition is scripted: an energy detector finds speech segments in the audio (timing
is audio time), and each segment takes the next text of the `utterances` control list.
A `Finalize` with nothing pending is answered with an empty `from_finalize` result.
`drop_after_finals: N` closes one connection with 1011 right after its N-th final.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from audio.codec import ulaw_decode

_state: dict[str, Any] = {}
_log: list[dict[str, Any]] = []
_utterances: list[str] = []
_connections = 0


def _defaults() -> dict[str, Any]:
    return {
        "api_key": "test-deepgram-key",
        "idle_timeout_s": 10.0,
        "drop_after_finals": None,
        "junk_first": False,  # two text messages that are not JSON objects, first thing
    }


_state.update(_defaults())


class _Listener:
    """One connection's recogniser state, in audio time."""

    def __init__(self, ws: WebSocket, conn: int, query: dict[str, str]) -> None:
        self.ws = ws
        self.conn = conn
        self.mulaw = query["encoding"] == "mulaw"
        self.rate = int(query["sample_rate"])
        endpointing = query.get("endpointing", "10")
        self.endpointing_ms = None if endpointing == "false" else int(endpointing)
        self.utterance_end_ms = (
            int(query["utterance_end_ms"]) if "utterance_end_ms" in query else None
        )
        self.vad_events = query.get("vad_events") == "true"
        self.interim = query.get("interim_results") == "true"
        self.request_id = str(uuid.uuid4())
        self.samples = 0  # audio received
        self.carry = np.zeros(0, dtype=np.int16)
        self.speech_ms = 0  # consecutive loud ms (before a segment is confirmed)
        self.silence_ms = 0
        self.segment: dict[str, Any] | None = None  # {"words", "start", "speech_ms", "sent"}
        self.last_interim_ms = 0
        self.finals = 0
        self.awaiting_utterance_end = False

    def now(self) -> float:
        return self.samples / self.rate

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(message))

    def results(
        self, words: list[str], *, final: bool, speech_final: bool, finalize: bool
    ) -> dict[str, Any]:
        start = self.segment["start"] if self.segment else self.now()
        duration = max(0.0, self.now() - start)
        step = duration / max(1, len(words))
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(duration, 3),
            "start": round(start, 3),
            "is_final": final,
            "speech_final": speech_final,
            "from_finalize": finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(words),
                        "confidence": 0.99,
                        "words": [
                            {
                                "word": w.lower().strip(".,?!"),
                                "start": round(start + i * step, 3),
                                "end": round(start + (i + 1) * step, 3),
                                "confidence": 0.99,
                                "punctuated_word": w,
                            }
                            for i, w in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": "2-general-nova", "version": "2024-01-01", "arch": "nova-3"},
                "model_uuid": "00000000-0000-0000-0000-000000000001",
            },
        }

    async def audio(self, data: bytes) -> None:
        pcm = ulaw_decode(data) if self.mulaw else np.frombuffer(data, dtype="<i2").astype(np.int16)
        pcm = np.concatenate([self.carry, pcm])
        window = self.rate // 50
        whole = len(pcm) - len(pcm) % window
        self.carry = pcm[whole:]
        for offset in range(0, whole, window):
            chunk = pcm[offset : offset + window].astype(np.float64)
            self.samples += window
            await self._window(float(np.sqrt(np.mean(chunk * chunk))) > 500)

    async def _window(self, loud: bool) -> None:
        if loud:
            self.silence_ms = 0
            self.speech_ms += 20
            if self.segment is None and self.speech_ms >= 100:
                text = _utterances.pop(0) if _utterances else "hello"
                self.segment = {"words": text.split(), "start": self.now() - 0.1, "speech_ms": 0}
                self.awaiting_utterance_end = False
                self.last_interim_ms = 0
                if self.vad_events:
                    await self.send(
                        {
                            "type": "SpeechStarted",
                            "channel": [0, 1],
                            "timestamp": round(self.now() - 0.1, 3),
                        }
                    )
            if self.segment is not None:
                self.segment["speech_ms"] += 20
                if self.interim and self.segment["speech_ms"] - self.last_interim_ms >= 250:
                    self.last_interim_ms = self.segment["speech_ms"]
                    words = self.segment["words"]
                    n = max(1, min(len(words), self.segment["speech_ms"] // 300))
                    await self.send(
                        self.results(words[:n], final=False, speech_final=False, finalize=False)
                    )
            return
        self.speech_ms = 0
        self.silence_ms += 20
        if (
            self.segment is not None
            and self.endpointing_ms is not None
            and self.silence_ms >= self.endpointing_ms
        ):
            await self.final(speech_final=True, finalize=False)
        if (
            self.awaiting_utterance_end
            and self.utterance_end_ms is not None
            and self.silence_ms >= self.utterance_end_ms
        ):
            self.awaiting_utterance_end = False
            last = round(self.now() - self.silence_ms / 1000, 3)
            await self.send({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last})

    async def final(self, *, speech_final: bool, finalize: bool) -> None:
        words = self.segment["words"] if self.segment else []
        await self.send(
            self.results(words, final=True, speech_final=speech_final, finalize=finalize)
        )
        if self.segment is not None:
            self.awaiting_utterance_end = True
            self.finals += 1
        self.segment = None
        drop = _state.get("drop_after_finals")
        if drop is not None and words and self.finals >= int(drop):
            _state["drop_after_finals"] = None
            await self.ws.close(code=1011, reason="fake drop")
            raise WebSocketDisconnect(1011)

    async def close_stream(self) -> None:
        if self.segment is not None:
            await self.final(speech_final=True, finalize=False)
        await self.send(
            {
                "type": "Metadata",
                "transaction_key": "deprecated",
                "request_id": self.request_id,
                "sha256": "0" * 64,
                "created": datetime.now(UTC).isoformat(),
                "duration": round(self.now(), 3),
                "channels": 1,
                "models": ["00000000-0000-0000-0000-000000000001"],
                "model_info": {},
            }
        )
        await self.ws.close(code=1000)


async def listen(ws: WebSocket) -> None:
    global _connections
    query = dict(ws.query_params)
    auth = ws.headers.get("authorization", "")
    _connections += 1
    conn = _connections
    extensions = ws.headers.get("sec-websocket-extensions")  # what the client offered
    _log.append(
        {"conn": conn, "kind": "open", "path": ws.url.path, "query": query, "auth": auth,
         "extensions": extensions}
    )  # fmt: skip
    if auth != f"Token {_state['api_key']}":
        await ws.send_denial_response(
            JSONResponse({"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, 401)
        )
        return
    if (
        "model" not in query
        or query.get("encoding") not in ("mulaw", "linear16")
        or "sample_rate" not in query
    ):
        await ws.send_denial_response(
            JSONResponse({"err_code": "Bad Request", "err_msg": "bad query"}, 400)
        )
        return
    await ws.accept()
    if _state["junk_first"]:
        await ws.send_text("not json")
        await ws.send_text("[1, 2]")
    listener = _Listener(ws, conn, query)
    try:
        while True:
            try:
                async with asyncio.timeout(float(_state["idle_timeout_s"])):
                    message = await ws.receive()
            except TimeoutError:
                await ws.close(code=1011, reason="NET-0001: no audio received within the timeout")
                break
            if message["type"] == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                data = message["bytes"]
                # Consecutive audio messages are one entry: their bytes, each size, and the
                # CRC-32 of their bytes in order.
                if _log and _log[-1]["kind"] == "audio" and _log[-1]["conn"] == conn:
                    _log[-1]["bytes"] += len(data)
                    _log[-1]["sizes"].append(len(data))
                    _log[-1]["crc32"] = zlib.crc32(data, _log[-1]["crc32"])
                else:
                    _log.append({
                        "conn": conn, "kind": "audio", "bytes": len(data), "sizes": [len(data)],
                        "crc32": zlib.crc32(data),
                    })  # fmt: skip
                await listener.audio(data)
                continue
            body = json.loads(message["text"])
            _log.append({"conn": conn, "kind": "json", "data": body})
            kind = body.get("type")
            if kind == "Finalize":
                await listener.final(speech_final=False, finalize=True)
            elif kind == "CloseStream":
                await listener.close_stream()
                break
    except WebSocketDisconnect:
        pass
    finally:
        _log.append({"conn": conn, "kind": "close"})
        with contextlib.suppress(RuntimeError):
            await ws.close()


async def control(request: Request) -> Response:
    body = await request.json()
    if "utterances" in body:
        _utterances[:] = list(body.pop("utterances"))
    _state.update(body)
    return JSONResponse({"ok": True})


async def control_log(request: Request) -> Response:
    return JSONResponse(_log)


async def control_reset(request: Request) -> Response:
    _log.clear()
    _utterances.clear()
    _state.clear()
    _state.update(_defaults())
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        WebSocketRoute("/v1/listen", listen),
        Route("/control", control, methods=["POST"]),
        Route("/control/log", control_log, methods=["GET"]),
        Route("/control/reset", control_reset, methods=["POST"]),
    ]
)
