"""uvicorn's HTTP protocol with a deadline on each request: the slowloris bound.

uvicorn (0.54, httptools and h11 alike) arms no timer on a new connection nor while a
request's head trickles in: `timeout_keep_alive` runs only between requests and the first
byte cancels it, so a client sending one header line a second holds its connection (and a
`limit_concurrency` slot) for as long as it likes. `deadline_protocol()` makes a subclass
of uvicorn's httptools protocol that closes a connection whose request has not fully
arrived (head and body) within `timeout_s` of the connection opening or of the previous
response, and refuses a request head over `max_head_bytes` with 431. A connection
upgraded to a WebSocket is the stream driver's from then on (`STREAM_START_TIMEOUT_S`).

Each request's scope also carries `extensions["voice_gateway.abort"]["abort"]`: a callable
that resets the connection at once, unsent bytes and all. An ASGI app can only end a
response by writing its last chunk, which waits for a client that does not read; the event
stream cuts such a client with it (`ABORT_EXTENSION`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

ABORT_EXTENSION = "voice_gateway.abort"

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


def deadline_protocol(*, timeout_s: float, max_head_bytes: int) -> type[asyncio.Protocol]:
    """An `http=` protocol class for `uvicorn.Config` bounding each request in time and size."""

    class DeadlineHttpProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            extensions = {ABORT_EXTENSION: {"abort": self._abort}}
            self.scope["extensions"] = extensions  # type: ignore[typeddict-item]

        def _abort(self) -> None:
            # A reset (linger 0), not a close: the kernel would otherwise keep sending
            # what it holds to a client that reads slowly or not at all.
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

        def data_received(self, data: bytes) -> None:
            awaiting = self._awaiting_head()
            super().data_received(data)
            # Bytes count towards the head only while it is still incomplete after them.
            if awaiting and self._awaiting_head() and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    log.info("request head too large: connection refused")
                    self.transport.write(_HEAD_TOO_LARGE)
                    self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets its own deadline

        def _upgraded(self) -> bool:
            return self.transport.get_protocol() is not self

        def _awaiting_head(self) -> bool:
            cycle = self.cycle
            return (cycle is None or cycle.response_complete) and not self._upgraded()

        def _arm(self) -> None:
            self._disarm()
            self._head_bytes = 0
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self._upgraded():
                return
            cycle = self.cycle
            receiving_body = cycle is not None and cycle.more_body and not cycle.response_complete
            if self._awaiting_head() or receiving_body:
                log.info(
                    "request not received within %.0f s: connection closed",
                    timeout_s,
                    extra={"client": self.client},
                )
                self.transport.close()

    return DeadlineHttpProtocol
