"""uvicorn's sans-I/O WebSocket protocol with a short way for the frames a media stream
carries fifty times a second per call.

uvicorn (0.55, `websockets-sansio`) hands every received byte to the `websockets`
library's frame parser, a generator that reads a frame a few bytes at a time and builds an
enum and a frame object for it, then pauses the socket's reading after each message and
resumes it when the app has taken the message (two `epoll_ctl` calls a message). At 64
calls that parser alone took 29 % of a gateway's event-loop thread (py-spy, 2026-12-03).

`FastFrameProtocol` parses the common case itself: a complete, final, masked text or binary
frame with no reserved bits, no larger than `ws_max_size`. Its payload is unmasked by
`websockets`' own C routine and given to the app exactly as uvicorn gives it (text decoded
as UTF-8, 1007 if it is not; nothing once the app has closed). A frame cut by the TCP
stream waits for the rest of it. Reading pauses only once `PAUSE_AT` messages wait for the
app (so a connection holds about `PAUSE_AT` times `ws_max_size` at most, plus one read).
The messages wait in an `_Inbox`, not an `asyncio.Queue`: the same order and wake-ups for
the app's `receive`, without the bookkeeping of a queue with bounds and `join()`.

Everything else goes to `websockets` as before, which therefore only ever sees whole
frames, from a frame boundary: a ping or pong (it answers a ping), and from the first
close, continuation or fragmented frame, or a frame it must refuse (reserved bits,
unmasked, too large, unknown opcode: it fails the connection with the right code), the
rest of the connection. The short way starts with the first bytes after the handshake,
and only if none came before it (uvicorn's HTTP protocol hands this one the request's head
alone, so no frame arrives with it).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without the C extension
    from websockets.utils import apply_mask

PAUSE_AT = 16  # messages waiting for the app before the socket's reading pauses

_TEXT, _BINARY, _PING, _PONG = 0x1, 0x2, 0x9, 0xA


class _Inbox:
    """The messages a connection received for its app, in order: what uvicorn uses of
    `asyncio.Queue` (`put_nowait`, `get`, `get_nowait`, `empty`, `qsize`), a few
    microseconds a message cheaper (no bound to check, no count of unfinished items)."""

    def __init__(self) -> None:
        self._items: collections.deque[ASGIReceiveEvent] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def put_nowait(self, item: ASGIReceiveEvent) -> None:
        self._items.append(item)
        self._wake_next()

    async def get(self) -> ASGIReceiveEvent:
        items = self._items
        while not items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and items:
                    self._wake_next()  # woken, then cancelled: the next reader takes it
                raise
        return items.popleft()

    def get_nowait(self) -> ASGIReceiveEvent:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def _wake_next(self) -> None:
        """Wake the first reader still waiting (one whose wait was cancelled is not)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class FastFrameProtocol(WebSocketsSansIOProtocol):
    """`ws=` protocol class for `uvicorn.Config` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue: Any = _Inbox()  # uvicorn's own code puts its messages here too
        self._short_way = False  # frames are parsed here
        self._handed_over = False  # `websockets` has been given frame bytes: it keeps them
        self._pending = bytearray()  # the start of a frame whose end has not arrived
        self._needed = 0  # bytes `_pending` must reach before a frame may be whole

    @property
    def short_way(self) -> bool:
        """True while this protocol parses the frames itself."""
        return self._short_way

    def data_received(self, data: bytes) -> None:
        if self._short_way:
            if not self._pending:
                self._frames(data)
                return
            self._pending += data  # a frame cut by TCP: parsed again once it may be whole
            if len(self._pending) >= self._needed:
                buf = bytes(self._pending)
                self._pending.clear()
                self._frames(buf)
        elif self._short_way_ready():
            self._short_way = True
            self._frames(data)
        else:
            if self.handshake_initiated:  # frame bytes `websockets` keeps: early or handed over
                self._handed_over = True
            super().data_received(data)  # else the request's head (uvicorn passes it alone)

    def _short_way_ready(self) -> bool:
        """True once the handshake is done and no frame byte has reached `websockets`."""
        return (
            self.handshake_complete
            and not self._handed_over
            and not self.close_sent
            and self.conn.state is State.OPEN
            and not self.conn.reader.buffer
        )

    def _frames(self, buf: bytes) -> None:
        """Take every whole frame in `buf`; keep a partial one for the next bytes."""
        pos, end = 0, len(buf)
        max_size = self.conn.max_size
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if end - pos < head:
                self._keep(buf[pos:], head)
                return
            if head > 2:
                length = int.from_bytes(buf[pos + 2 : pos + head], "big")
            opcode = first & 0x0F
            # Final, no reserved bits, masked: the only frames a client may send unfragmented.
            plain = (first & 0xF0) == 0x80 and (second & 0x80) == 0x80
            data = plain and opcode in (_TEXT, _BINARY)
            control = plain and opcode in (_PING, _PONG)
            if not (data or control) or (max_size is not None and length > max_size):
                self._hand_over(buf[pos:])  # from here on, all of it is `websockets`'
                return
            size = head + 4 + length
            if end - pos < size:
                self._keep(buf[pos:], size)
                return
            if control:  # one whole frame: `websockets` is at a frame boundary again after it
                super().data_received(buf[pos : pos + size])
                if self.conn.parser_exc is not None or self.transport.is_closing():
                    self._hand_over()  # it failed the connection: nothing more to give it
                    return
                if self.conn.state is not State.OPEN:  # closing: `websockets` takes the rest
                    self._hand_over(buf[pos + size :])
                    return
            else:
                mask = buf[pos + head : pos + head + 4]
                payload = apply_mask(buf[pos + head + 4 : pos + size], mask)
                if not self._deliver(opcode == _TEXT, payload):
                    return
            pos += size
        if pos < end:
            self._keep(buf[pos:], 2)

    def _keep(self, start: bytes, needed: int) -> None:
        """Hold the start of a frame until at least `needed` bytes of it have arrived."""
        self._pending[:] = start
        self._needed = needed

    def _hand_over(self, rest: bytes = b"") -> None:
        """Leave the rest of the connection, from `rest` on, to `websockets`."""
        self._short_way = False
        self._handed_over = True
        self._pending.clear()
        if rest:
            super().data_received(rest)

    def _deliver(self, text: bool, payload: bytes) -> bool:
        """Queue one message for the app, as uvicorn does; False if the connection failed."""
        if self.close_sent:
            return True  # the app is past `websocket.close`: read on until the peer's close
        if text:
            try:
                decoded = payload.decode()
            except UnicodeDecodeError:
                self.logger.warning("invalid UTF-8 in a text frame: closed 1007")
                self._hand_over()
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return False
            self.queue.put_nowait({"type": "websocket.receive", "text": decoded})
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": payload})
        if not self.read_paused and self.queue.qsize() >= PAUSE_AT:
            self.read_paused = True
            self.transport.pause_reading()
        return True
