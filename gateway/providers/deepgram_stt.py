"""Streaming speech-to-text on Deepgram's live WebSocket (`/v1/listen`; the official SDK
gives its endpoints, the messages are read and written here as plain JSON).

Audio goes at the transport's own rate: 8 kHz calls are sent as `mulaw` (what Twilio
delivers, so nothing is resampled), 16/24/48 kHz ones as `linear16`. Every frame is sent,
agent speech included, so interim results can barge in before the VAD is sure. Frames go
out gathered in chunks of `chunk_ms` (100 ms: one WebSocket message where there were five,
each with its own client framing, mask and write); interim words come up to a chunk later.
While the VAD hears nothing and the caller is not mid-utterance, chunks grow up to
`quiet_chunk_ms` (250 ms, the top of what Deepgram advises a message to carry): most of a
call is such audio, and no words are on their way in it. The first frame the VAD hears
goes at once with everything gathered before it, so the onset of speech is not held back.

Turn-taking stays with the session's VAD, the same on every provider: at its end of
turn the stream sends what it has gathered, however short, then `Finalize` (the end of a
turn never waits for a chunk to fill), Deepgram answers with the last `is_final` result
(`from_finalize: true`), and the stream yields one final `Transcript` made of every
final piece since the previous one. If that answer does not come in `finalize_timeout_s`
the words already final are used, so a turn is never lost to a slow socket.

A socket that drops mid-call is reopened with backoff; audio not yet covered by a final
result (up to `replay_s`) is sent again on the new socket so the turn in progress keeps
its words. `KeepAlive` goes out whenever no audio has been sent for `keepalive_s`.

The socket is opened here rather than by the SDK's `listen.v1.connect`, the same request
(URL, query, `Authorization: Token`), so that it offers no permessage-deflate: the SDK's
client compresses every audio message, which costs CPU for a few kB/s saved. Its messages
are not turned into the SDK's models either: building a `ListenV1Results` (a union tried
member by member) cost more than everything else done with a result, and only the
transcript, `is_final` and `from_finalize` are used. A message that is not a JSON object
is logged and skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from deepgram.environment import DeepgramClientEnvironment
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from audio.codec import ulaw_encode
from audio.frames import AudioFrame, ChunkGatherer
from gateway.errors import ProviderError
from gateway.providers.base import Transcript
from gateway.providers.sockets import next_json_object

log = logging.getLogger(__name__)

_RATES = (8000, 16000, 24000, 32000, 48000)
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
# Deepgram's control messages, as its SDK writes them.
_FINALIZE = '{"type": "Finalize"}'
_CLOSE_STREAM = '{"type": "CloseStream"}'
_KEEP_ALIVE = '{"type": "KeepAlive"}'


def deepgram_environment(base_url: str | None) -> DeepgramClientEnvironment:
    """The SDK's endpoints for `base_url` (ws(s):// or http(s)://); Deepgram's cloud if None."""
    if not base_url:
        return DeepgramClientEnvironment.PRODUCTION
    parts = urlsplit(base_url.rstrip("/"))
    secure = parts.scheme in ("wss", "https")
    ws = urlunsplit(("wss" if secure else "ws", parts.netloc, parts.path, "", ""))
    http = urlunsplit(("https" if secure else "http", parts.netloc, parts.path, "", ""))
    return DeepgramClientEnvironment(base=http, production=ws, agent=ws, agent_rest=http)


class DeepgramSTT:
    """`STT` on Deepgram live transcription; one WebSocket per call."""

    name = "deepgram"
    continuous = True

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "nova-3",
        language: str = "en",
        endpointing_ms: int = 300,
        finalize_timeout_s: float = 1.0,
        keepalive_s: float = 4.0,
        replay_s: float = 5.0,
        chunk_ms: int = 100,
        quiet_chunk_ms: int = 250,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._listen_url = deepgram_environment(base_url).production + "/v1/listen"
        self._headers = {"Authorization": f"Token {api_key}"}
        self._model = model
        self._language = language
        self._endpointing_ms = endpointing_ms
        self._finalize_timeout_s = finalize_timeout_s
        self._keepalive_s = keepalive_s
        self._replay_s = replay_s
        self._chunk_ms = chunk_ms
        self._quiet_chunk_ms = quiet_chunk_ms
        self._on_reconnect = on_reconnect

    def input_rate(self, transport_rate: int) -> int:
        """The transport's own rate when Deepgram takes it, else 16 kHz."""
        return transport_rate if transport_rate in _RATES else 16000

    async def open_stream(self, *, call_id: str, sample_rate: int) -> DeepgramStream:
        """Open the call's socket (raises `ProviderError` if Deepgram refuses it)."""
        stream = DeepgramStream(self, call_id=call_id, sample_rate=sample_rate)
        await stream.connect()
        return stream

    def listen_url(self, sample_rate: int) -> str:
        """The live transcription URL for a stream at `sample_rate`, with its options."""
        query = {k: str(v) for k, v in self.connect_options(sample_rate).items()}
        return f"{self._listen_url}?{urlencode(query)}"

    def connect_options(self, sample_rate: int) -> dict[str, Any]:
        return {
            "model": self._model,
            "language": self._language,
            "encoding": "mulaw" if sample_rate == 8000 else "linear16",
            "sample_rate": sample_rate,
            "channels": 1,
            "interim_results": "true",
            "punctuate": "true",
            "smart_format": "true",
            "endpointing": self._endpointing_ms,
            "vad_events": "true",
        }


class DeepgramStream:
    """One call's live transcription socket (see the module docstring)."""

    live_words = True

    def __init__(self, stt: DeepgramSTT, *, call_id: str, sample_rate: int) -> None:
        self._stt = stt
        self._call_id = call_id
        self._rate = sample_rate
        self._mulaw = sample_rate == 8000
        self._out: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._stack: contextlib.AsyncExitStack | None = None
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._final_pieces: list[str] = []
        self._interim = ""  # the latest interim words after the final pieces
        self._finalizes_pending = 0
        self._finalize_timer: asyncio.TimerHandle | None = None
        sample_bytes = 1 if self._mulaw else 2
        self._gathered = ChunkGatherer(
            sample_rate,
            chunk_ms=stt._chunk_ms,
            sample_bytes=sample_bytes,
            quiet_chunk_ms=stt._quiet_chunk_ms,
        )
        # Audio sent since the last final result (its newest `replay_s`, in whole chunks),
        # replayed after a reconnect.
        self._unconfirmed: collections.deque[bytes] = collections.deque()
        self._unconfirmed_bytes = 0
        self._replay_bytes = int(stt._replay_s * sample_rate) * sample_bytes
        self._last_send = time.monotonic()
        self.reconnects = 0

    # --------------------------------------------------------------- STTStream

    async def push(self, frame: AudioFrame, *, quiet: bool = False) -> None:
        if not self._mulaw:
            data = frame.pcm.astype("<i2").tobytes()
        elif frame.ulaw is not None:  # a Twilio frame: its bytes as they came
            data = frame.ulaw
        else:
            data = ulaw_encode(frame.pcm)
        chunk = self._gathered.add(data, quiet=quiet)
        if chunk is not None:
            await self._send_chunk(chunk)

    async def _send_gathered(self) -> None:
        """Send what is gathered now, however short (before `Finalize` / `CloseStream`)."""
        chunk = self._gathered.flush()
        if chunk is not None:
            await self._send_chunk(chunk)

    async def _send_chunk(self, data: bytes) -> None:
        unconfirmed = self._unconfirmed
        unconfirmed.append(data)
        self._unconfirmed_bytes += len(data)
        while (
            len(unconfirmed) > 1
            and self._unconfirmed_bytes - len(unconfirmed[0]) >= self._replay_bytes
        ):
            self._unconfirmed_bytes -= len(unconfirmed.popleft())
        # Not sent (the socket is down, or the send failed): kept in `_unconfirmed`, sent
        # when the socket is back; a failed send marks it down (the reader notices too and
        # reconnects; marking a socket already down changes nothing).
        if await self._send(data):
            self._last_send = time.monotonic()
        else:
            self._connected.clear()

    async def end_utterance(self) -> None:
        await self._send_gathered()  # the turn's tail goes ahead of `Finalize`
        self._finalizes_pending += 1
        loop = asyncio.get_running_loop()
        if self._finalize_timer is None:
            self._finalize_timer = loop.call_later(
                self._stt._finalize_timeout_s, self._finalize_timed_out
            )
        await self._send(_FINALIZE)

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        """Flush with `CloseStream`, then close the socket."""
        self._closing = True
        if self._finalize_timer is not None:
            self._finalize_timer.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        await self._send_gathered()
        await self._send(_CLOSE_STREAM)
        if self._reader is not None:
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._reader)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
        await self._disconnect()
        self._out.put_nowait(None)

    async def _send(self, message: str | bytes) -> bool:
        """Send audio or a control message if the socket is up; whether it went."""
        socket = self._socket
        if socket is None or not self._connected.is_set():
            return False
        try:
            await socket.send(message)
        except (ConnectionClosed, WebSocketException, OSError):
            return False
        return True

    # ------------------------------------------------------------ connection

    async def connect(self) -> None:
        """Open the socket and start the reader and keep-alive tasks."""
        await self._open_socket()
        self._reader = asyncio.create_task(self._read_forever(), name="deepgram-reader")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="deepgram-keepalive")

    async def _open_socket(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            socket = await stack.enter_async_context(
                websocket_connect(
                    self._stt.listen_url(self._rate),
                    additional_headers=self._stt._headers,
                    compression=None,
                )
            )
        except InvalidStatus as exc:
            await stack.aclose()
            status = exc.response.status_code
            raise ProviderError(
                f"Deepgram refused the stream: HTTP {status}", provider="deepgram", status=status
            ) from exc
        except (OSError, WebSocketException) as exc:
            await stack.aclose()
            raise ProviderError(f"Deepgram unreachable: {exc}", provider="deepgram") from exc
        self._stack = stack
        self._socket = socket
        for data in list(self._unconfirmed):
            await socket.send(data)
        self._last_send = time.monotonic()
        self._connected.set()

    async def _disconnect(self) -> None:
        self._connected.clear()
        stack, self._stack = self._stack, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def _read_forever(self) -> None:
        while not self._closing:
            try:
                await self._read_socket()
            except (ConnectionClosed, WebSocketException, OSError) as exc:
                if self._closing:
                    return
                log.warning("Deepgram socket dropped: %s", exc, extra={"call_id": self._call_id})
            if self._closing:
                return
            await self._reconnect()

    async def _read_socket(self) -> None:
        socket = self._socket
        assert socket is not None  # set by `_open_socket`, before the reader reads
        while True:
            message = await next_json_object(socket, "Deepgram")
            kind = message.get("type")
            if kind == "Results":
                self._on_results(message)
            elif kind == "Error":
                log.warning("Deepgram error: %s", message.get("description") or message)

    async def _reconnect(self) -> None:
        await self._disconnect()
        if self._finalizes_pending:
            self._emit_final()  # the turn in progress keeps the words already final
        attempt = 0
        while not self._closing:
            await asyncio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
            attempt += 1
            try:
                await self._open_socket()
            except ProviderError as exc:
                log.warning("Deepgram reconnect failed: %s", exc)
                continue
            self.reconnects += 1
            if self._stt._on_reconnect is not None:
                self._stt._on_reconnect()
            log.info("Deepgram socket reopened", extra={"reconnects": self.reconnects})
            return

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._stt._keepalive_s / 2)
            idle = time.monotonic() - self._last_send
            if idle >= self._stt._keepalive_s and await self._send(_KEEP_ALIVE):
                self._last_send = time.monotonic()

    # --------------------------------------------------------------- results

    def _on_results(self, results: dict[str, Any]) -> None:
        text = _transcript(results)
        if results.get("is_final") is not True:
            if text:
                self._interim = text
                self._out.put_nowait(Transcript(self._joined(text), is_final=False))
            return
        self._interim = ""
        self._unconfirmed.clear()
        self._unconfirmed_bytes = 0
        if text:
            self._final_pieces.append(text)
            # The words so far, for a turn judged on them (the final comes on `Finalize`).
            self._out.put_nowait(Transcript(self._joined(), is_final=False))
        if results.get("from_finalize") is True and self._finalizes_pending:
            self._emit_final()

    async def words_so_far(self) -> str:
        """What Deepgram heard of the utterance so far: its final pieces and latest interim."""
        return self._joined(self._interim)

    def _joined(self, extra: str = "") -> str:
        return " ".join([*self._final_pieces, extra]).strip()

    def _emit_final(self) -> None:
        self._finalizes_pending = max(0, self._finalizes_pending - 1)
        if self._finalize_timer is not None:
            self._finalize_timer.cancel()
            self._finalize_timer = None
        text = self._joined()
        self._final_pieces.clear()
        self._out.put_nowait(Transcript(text, is_final=True))

    def _finalize_timed_out(self) -> None:
        self._finalize_timer = None
        if self._finalizes_pending:
            log.warning("Deepgram did not answer Finalize in time; using the final words so far")
            self._emit_final()


def _transcript(results: dict[str, Any]) -> str:
    """The first alternative's transcript of a `Results` message ("" if it has none)."""
    channel = results.get("channel")
    alternatives = channel.get("alternatives") if type(channel) is dict else None
    first = alternatives[0] if type(alternatives) is list and alternatives else None
    text = first.get("transcript") if type(first) is dict else None
    return text.strip() if type(text) is str else ""
