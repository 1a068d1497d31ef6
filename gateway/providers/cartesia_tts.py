"""Streaming text-to-speech on Cartesia's TTS WebSocket (`/tts/websocket`).

One socket per call, opened at the first reply; one context per agent turn. Each
sentence goes into the turn's context as a continuation (`continue: true`) as soon as
the LLM completes it, so the whole reply keeps one prosody, followed by a manual flush:
the flush ids on the audio chunks then say which sentence each chunk belongs to, which
is what lets the session count what the caller heard. Audio comes back as raw
`pcm_s16le` at the transport's rate when Cartesia offers it (8 kHz for Twilio, so only
the mu-law encoding is left to do). Barge-in cancels the context.

A socket that drops fails the turns in flight with `ProviderError`; the next turn opens
a new socket.

The socket is the one the official SDK's `tts.websocket_connect` opens (its URL and
headers: key, `cartesia-version`), opened here so that it offers no permessage-deflate
(inflating every audio chunk costs CPU for bandwidth that loopback or a data centre does
not lack), and its messages are plain JSON both ways: the SDK walked every request through
its typed schema (about 0.3 ms of CPU each, five requests a reply) and built a model of
every chunk. A message that is not a JSON object is logged and skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from cartesia import AsyncCartesia
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from gateway.errors import ProviderError
from gateway.providers.base import SegmentDone, SpeechAudio, SpeechEvent
from gateway.providers.sockets import next_json_object

log = logging.getLogger(__name__)

_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


class CartesiaTTS:
    """`TTS` on Cartesia's WebSocket API."""

    name = "cartesia"

    def __init__(
        self,
        *,
        api_key: str,
        voice_id: str,
        base_url: str | None = None,
        model: str = "sonic-3",
        language: str = "en",
    ) -> None:
        self._client = AsyncCartesia(
            api_key=api_key,
            base_url=_http_url(base_url) if base_url else None,
            websocket_base_url=_ws_url(base_url) if base_url else None,
        )
        self.voice_id = voice_id
        self.model = model
        self.language = language

    def output_rate(self, transport_rate: int) -> int:
        """The transport's own rate when Cartesia produces it, else 24 kHz."""
        return transport_rate if transport_rate in _RATES else 24000

    async def aclose(self) -> None:
        """Close the client's HTTP connections (at shutdown)."""
        await self._client.close()

    async def open(self, *, call_id: str, sample_rate: int) -> CartesiaConnection:
        return CartesiaConnection(self, call_id=call_id, sample_rate=sample_rate)

    def websocket_request(self) -> tuple[str, dict[str, str]]:
        """The URL and headers of the SDK's `tts.websocket_connect` request."""
        client = self._client
        base = str(client.websocket_base_url or client.base_url.copy_with(scheme="wss"))
        headers = {k: v for k, v in client.default_headers.items() if isinstance(v, str)}
        return base.rstrip("/") + "/tts/websocket", headers

    async def connect(self) -> ClientConnection:
        """A new WebSocket (raises `ProviderError`)."""
        url, headers = self.websocket_request()
        try:
            return await websocket_connect(
                url, additional_headers=headers, user_agent_header=None, compression=None
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderError(
                f"Cartesia refused the socket (HTTP {status})", provider=self.name, status=status
            ) from exc
        except (OSError, WebSocketException) as exc:
            raise ProviderError(f"Cartesia unreachable: {exc}", provider=self.name) from exc


def _ws_url(base_url: str) -> str:
    return base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")


def _http_url(base_url: str) -> str:
    return base_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1).rstrip("/")


class CartesiaConnection:
    """The call's socket: opened on first use, reopened after a drop; routes by context id."""

    def __init__(self, tts: CartesiaTTS, *, call_id: str, sample_rate: int) -> None:
        self._tts = tts
        self._call_id = call_id
        self.sample_rate = sample_rate
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._turns: dict[str, asyncio.Queue[dict[str, Any] | ProviderError]] = {}

    def turn(self) -> CartesiaSpeech:
        return CartesiaSpeech(self, context_id=f"{self._call_id}-{uuid.uuid4().hex[:12]}")

    async def send(self, request: dict[str, Any], *, connect: bool = True) -> None:
        """Send one request, opening the socket first if there is none (and `connect`)."""
        async with self._lock:
            if self._socket is None:
                if not connect:
                    return
                self._socket = await self._tts.connect()
                self._reader = asyncio.create_task(self._read(self._socket), name="cartesia")
            socket = self._socket
        try:
            await socket.send(orjson.dumps(request).decode())
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            raise ProviderError(f"Cartesia socket closed: {exc}", provider="cartesia") from exc

    def register(self, context_id: str) -> asyncio.Queue[dict[str, Any] | ProviderError]:
        queue: asyncio.Queue[dict[str, Any] | ProviderError] = asyncio.Queue()
        self._turns[context_id] = queue
        return queue

    def unregister(self, context_id: str) -> None:
        self._turns.pop(context_id, None)

    async def _read(self, socket: ClientConnection) -> None:
        error: Exception
        try:
            while True:
                event = await next_json_object(socket, "Cartesia")
                queue = self._turns.get(str(event.get("context_id") or ""))
                if queue is not None:
                    queue.put_nowait(event)
        except (ConnectionClosed, WebSocketException, OSError) as exc:
            error = exc
        if self._socket is socket:
            self._socket = None
        log.warning("Cartesia socket dropped: %s", error)
        failure = ProviderError(f"Cartesia socket dropped: {error}", provider="cartesia")
        for queue in self._turns.values():
            queue.put_nowait(failure)

    async def aclose(self) -> None:
        socket, self._socket = self._socket, None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if socket is not None:
            with contextlib.suppress(Exception):
                await socket.close()


class CartesiaSpeech:
    """One agent turn on one Cartesia context (see the module docstring)."""

    def __init__(self, connection: CartesiaConnection, *, context_id: str) -> None:
        self._conn = connection
        self._context_id = context_id
        self._events = connection.register(context_id)
        self._finished = False
        self._cancelled = False

    def _request(self, transcript: str, *, more: bool, flush: bool = False) -> dict[str, Any]:
        tts = self._conn._tts
        request: dict[str, Any] = {
            "context_id": self._context_id,
            "model_id": tts.model,
            "transcript": transcript,
            "voice": {"mode": "id", "id": tts.voice_id},
            "output_format": {
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": self._conn.sample_rate,
            },
            "language": tts.language,
            "continue": more,
        }
        if flush:
            request["flush"] = True
        return request

    async def say(self, text: str) -> None:
        # Continuations are joined as sent: the space keeps sentences apart.
        await self._conn.send(self._request(text.strip() + " ", more=True))
        await self._conn.send(self._request("", more=True, flush=True))

    async def finish(self) -> None:
        self._finished = True
        await self._conn.send(self._request("", more=False))

    async def audio(self) -> AsyncIterator[SpeechEvent]:
        # Flush ids start at 1; the n-th sentence said is segment n - 1.
        segment = 0
        while True:
            event = await self._events.get()
            if isinstance(event, ProviderError):
                raise event
            kind = event.get("type")
            if kind == "chunk":
                segment = _flush_id(event, segment + 1) - 1
                encoded = event.get("data")
                data = base64.b64decode(encoded) if isinstance(encoded, str) and encoded else b""
                if data:
                    pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
                    yield SpeechAudio(segment, pcm)
            elif kind == "flush_done":
                flush_id = _flush_id(event, segment + 1)
                yield SegmentDone(flush_id - 1)
                segment = flush_id
            elif kind == "done":
                self._close()
                return
            elif kind == "error":
                self._close()
                status = event.get("status_code")
                raise ProviderError(
                    f"Cartesia error: {event.get('title', '')}: {event.get('message', '')}",
                    provider="cartesia",
                    status=status if type(status) is int else None,
                )

    def _close(self) -> None:
        self._cancelled = True  # nothing left to cancel
        self._conn.unregister(self._context_id)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._close()
        with contextlib.suppress(ProviderError):
            await self._conn.send({"context_id": self._context_id, "cancel": True}, connect=False)


def _flush_id(event: dict[str, Any], default: int) -> int:
    """A message's `flush_id` (the sentence it belongs to, from 1), or `default`."""
    flush_id = event.get("flush_id")
    return flush_id if type(flush_id) is int and flush_id > 0 else default
