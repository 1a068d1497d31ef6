"""`FastFrameProtocol` on a real uvicorn, from a client on a raw socket: the frames it parses
itself reach the app as uvicorn gives them, whatever way TCP cuts them; pings are answered;
fragmented, bad and oversized frames and closes go to `websockets`, which handles them as
it always did. (Frames a client sends with its handshake request never reach a WebSocket
protocol: uvicorn's HTTP protocol hands it the request's head alone.)"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.ws_protocol import PAUSE_AT, FastFrameProtocol

MAX_SIZE = 4096
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


async def _echo(websocket: WebSocket) -> None:
    """Echo text as "t:<text>" and bytes as "b:<size>"; "hold" waits for the app's `release`
    event first (messages queue meanwhile); `ended` is set once the app returns."""
    state = websocket.app.state
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None:
                if text == "hold":
                    await state.release.wait()
                await websocket.send_text(f"t:{text}")
            else:
                await websocket.send_text(f"b:{len(message['bytes'])}")
    except WebSocketDisconnect:
        return
    finally:
        state.ended.set()


_SERVERS: dict[int, uvicorn.Server] = {}
_APPS: dict[int, Starlette] = {}


def _protocols(port: int) -> list[FastFrameProtocol]:
    """The open WebSocket connections of the server on `port`."""
    connections = _SERVERS[port].server_state.connections
    return [c for c in connections if isinstance(c, FastFrameProtocol)]


def _short_ways(port: int) -> list[bool]:
    """For each open connection of the server on `port`: whether it takes the short way."""
    return [c.short_way for c in _protocols(port)]


def _app_state(port: int) -> State:
    return _APPS[port].state


@pytest.fixture
async def server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # clients wait in the backlog until uvicorn serves it
    app = Starlette(routes=[WebSocketRoute("/ws", _echo)])
    app.state.release, app.state.ended = asyncio.Event(), asyncio.Event()
    config = uvicorn.Config(
        app,
        ws=FastFrameProtocol,
        ws_max_size=MAX_SIZE,
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    _SERVERS[port], _APPS[port] = uv, app
    yield port
    del _SERVERS[port], _APPS[port]
    uv.should_exit = True
    await asyncio.wait_for(task, 30)
    sock.close()


def _frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, (0x80 if masked else 0) | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, (0x80 if masked else 0) | 126, size)
    else:
        head = struct.pack("!BBQ", first, (0x80 if masked else 0) | 127, size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The server's next frame (unmasked, unfragmented): opcode and payload."""
        async with asyncio.timeout(20):
            first, second = await self.reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(size)

    async def texts(self, count: int) -> list[str]:
        out = []
        for _ in range(count):
            opcode, payload = await self.frame()
            assert opcode == TEXT, (opcode, payload)
            out.append(payload.decode())
        return out

    async def close_code(self) -> int:
        opcode, payload = await self.frame()
        assert opcode == CLOSE, (opcode, payload)
        return int(struct.unpack("!H", payload[:2])[0])


@contextlib.asynccontextmanager
async def _connect(port: int) -> AsyncIterator[_Client]:
    """Open a WebSocket by hand."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    writer.write(request.encode())
    async with asyncio.timeout(20):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    try:
        yield _Client(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_whole_frames_in_one_write_and_frames_cut_anywhere_arrive_in_order(
    server: int,
) -> None:
    async with _connect(server) as client:
        several = b"".join(_frame(TEXT, f"m{i}".encode()) for i in range(5))
        await client.send(several)
        assert await client.texts(5) == [f"t:m{i}" for i in range(5)]
        assert _short_ways(server) == [True]  # parsed here, not by `websockets`
        # A text frame of each length encoding, a binary one, each cut at every few bytes.
        frames = [
            _frame(TEXT, b"x" * 100),
            _frame(TEXT, "é".encode() * 200),
            _frame(BINARY, bytes(range(256)) * 12),
        ]
        stream = b"".join(frames)
        for i in range(0, len(stream), 7):
            await client.send(stream[i : i + 7])
        assert await client.texts(3) == ["t:" + "x" * 100, "t:" + "é" * 200, "b:3072"]
        await client.send(_frame(CLOSE, struct.pack("!H", 1000)))
        assert await client.close_code() == 1000


async def test_a_ping_is_answered_and_the_frames_after_it_still_arrive(server: int) -> None:
    async with _connect(server) as client:
        await client.send(_frame(TEXT, b"a") + _frame(PING, b"hi") + _frame(TEXT, b"b"))
        got = [await client.frame() for _ in range(3)]
        assert (PONG, b"hi") in got
        assert [p.decode() for op, p in got if op == TEXT] == ["t:a", "t:b"]
        assert _short_ways(server) == [True]  # a ping does not end the short way
        await client.send(_frame(PONG, b"unasked") + _frame(TEXT, b"c"))
        assert await client.texts(1) == ["t:c"]


async def test_a_fragmented_message_is_joined_by_websockets(server: int) -> None:
    async with _connect(server) as client:
        await client.send(_frame(TEXT, b"one, ", fin=False) + _frame(CONT, b"two"))
        await client.send(_frame(TEXT, b"after"))
        assert await client.texts(2) == ["t:one, two", "t:after"]
        assert _short_ways(server) == [False]  # `websockets` keeps the connection


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_frame(TEXT, b"\xff\xfe not utf-8"), 1007),
        (_frame(TEXT, b"unmasked", masked=False), 1002),
        (_frame(TEXT, b"x" * (MAX_SIZE + 1)), 1009),
        (bytes([0x80 | 0x40 | TEXT]) + _frame(TEXT, b"rsv")[1:], 1002),  # a reserved bit
        (_frame(0x3, b"unknown opcode"), 1002),
    ],
    ids=["bad-utf8", "unmasked", "too-big", "reserved-bit", "unknown-opcode"],
)
async def test_a_bad_frame_fails_the_connection_with_its_code(
    server: int, frame: bytes, code: int
) -> None:
    async with _connect(server) as client:
        await client.send(_frame(TEXT, b"fine"))
        assert await client.texts(1) == ["t:fine"]
        await client.send(frame)
        assert await client.close_code() == code


async def test_reading_pauses_only_once_messages_wait_for_the_app(server: int) -> None:
    """While the app holds the first message the others queue; once PAUSE_AT of them wait,
    the socket's reading pauses; released, the app answers every one, in order, and reading
    resumes."""
    async with _connect(server) as client:
        [protocol] = _protocols(server)
        await client.send(_frame(TEXT, b"hold"))
        count = PAUSE_AT * 3
        for i in range(count):
            await client.send(_frame(TEXT, str(i).encode()))
        for _ in range(1000):  # bounded: until this process has read them
            if protocol.read_paused:
                break
            await asyncio.sleep(0.02)
        assert protocol.read_paused and protocol.queue.qsize() >= PAUSE_AT
        _app_state(server).release.set()
        assert await client.texts(count + 1) == ["t:hold"] + [f"t:{i}" for i in range(count)]
        await client.send(_frame(TEXT, b"more"))
        assert await client.texts(1) == ["t:more"]
        assert not protocol.read_paused


async def test_a_ping_websockets_refuses_fails_the_connection_once(server: int) -> None:
    """A ping over 125 bytes: 1002, and the app is told so once (not once more for the
    frames after it)."""
    async with _connect(server) as client:
        await client.send(_frame(TEXT, b"fine"))
        assert await client.texts(1) == ["t:fine"]
        [protocol] = _protocols(server)
        await client.send(_frame(PING, b"p" * 126) + _frame(TEXT, b"after"))
        assert await client.close_code() == 1002
        await asyncio.wait_for(_app_state(server).ended.wait(), 20)
        left = [protocol.queue.get_nowait() for _ in range(protocol.queue.qsize())]
        # The app took the 1002; what is left is the connection's loss (1005), as ever.
        assert left == [{"type": "websocket.disconnect", "code": 1005}]
