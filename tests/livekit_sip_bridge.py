"""LiveKit's SIP bridge for outbound calls, as far as tests need it: a proxy in front of a real
livekit-server (its HTTP API and its `/rtc` WebSockets pass through unchanged) that answers
`CreateSIPParticipant` itself, as LiveKit does when it dials (a `SIPParticipantInfo`), and
hands the request to the test: the test's callee then joins the room as the participant
of kind SIP the bridge would put there (see tests/livekit_caller.py). Without it a
livekit-server with no SIP bridge refuses every dial."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from types import TracebackType

import aiohttp
from aiohttp import web
from livekit.protocol import sip as lksip

DIAL_PATH = "/twirp/livekit.SIP/CreateSIPParticipant"
_HOP_BY_HOP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "keep-alive",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
}

OnDial = Callable[[lksip.CreateSIPParticipantRequest], Coroutine[None, None, None]]


class SipBridge:
    """Serves on 127.0.0.1:`port` for the livekit-server at `upstream` (http://...);
    `on_dial` runs beside the proxy for each dial (the callee answering)."""

    def __init__(self, upstream: str, port: int, on_dial: OnDial) -> None:
        self._upstream = upstream.rstrip("/")
        self._port = port
        self._on_dial = on_dial
        self.dials: list[lksip.CreateSIPParticipantRequest] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> SipBridge:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == DIAL_PATH:
            return await self._dial(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return await self._forward(request)

    async def _dial(self, request: web.Request) -> web.Response:
        dial = lksip.CreateSIPParticipantRequest.FromString(await request.read())
        self.dials.append(dial)
        info = lksip.SIPParticipantInfo(
            participant_id="PA_" + uuid.uuid4().hex[:12],
            participant_identity=dial.participant_identity,
            room_name=dial.room_name,
            sip_call_id="SCL_" + uuid.uuid4().hex[:12],
        )
        self._tasks.append(asyncio.create_task(self._on_dial(dial), name="sip-callee"))
        return web.Response(body=info.SerializeToString(), content_type="application/protobuf")

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            headers=self._headers(request),
            data=await request.read(),
        ) as answer:
            body = await answer.read()
            headers = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-encoding"
            }
            return web.Response(status=answer.status, body=body, headers=headers)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        assert self._session is not None
        client = web.WebSocketResponse(autoping=True)
        await client.prepare(request)
        url = self._upstream.replace("http://", "ws://", 1) + request.path_qs
        async with self._session.ws_connect(url, headers=self._headers(request)) as server:

            async def pump(
                source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            ) -> None:
                async for message in source:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        await sink.send_bytes(message.data)
                    elif message.type == aiohttp.WSMsgType.TEXT:
                        await sink.send_str(message.data)
                    else:
                        break
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await sink.close()

            pumps = [
                asyncio.create_task(pump(client, server)),
                asyncio.create_task(pump(server, client)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        return client
