"""A caller lookup endpoint as a CRM would run one: a real HTTP server on 127.0.0.1:0
(uvicorn in a thread). Each path answers as its script says (JSON, a status, raw bytes,
or only once `release` is set: a slow CRM), and every request is kept with the secrets
that verify its signature."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.net import free_port
from webhooks.errors import SignatureMismatch
from webhooks.signing import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass(frozen=True)
class Scripted:
    """How one path answers."""

    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    slow: bool = False  # answer only once the server's `release` event is set

    @classmethod
    def json(cls, data: Any, *, status: int = 200, slow: bool = False) -> Scripted:
        return cls(status=status, body=json.dumps(data).encode(), slow=slow)


@dataclass(frozen=True)
class LookupRequestSeen:
    path: str
    request_id: str
    timestamp: str
    signature: str
    body: bytes
    verified_by: tuple[str, ...]

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class LookupServer:
    base_url: str
    scripts: dict[str, Scripted] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    seen: list[LookupRequestSeen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base_url + path

    def requests_to(self, path: str) -> list[LookupRequestSeen]:
        with self._lock:
            return [r for r in self.seen if r.path == path]

    async def _lookup(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        path = request.url.path
        with self._lock:
            verified = tuple(s for s in self.secrets if _verifies(s, timestamp, body, signature))
            self.seen.append(
                LookupRequestSeen(
                    path=path,
                    request_id=request.headers.get(ID_HEADER, ""),
                    timestamp=timestamp,
                    signature=signature,
                    body=body,
                    verified_by=verified,
                )
            )
            script = self.scripts.get(path, Scripted(status=404, body=b""))
        if script.slow:  # held until the test (or its teardown) lets it go
            await asyncio.to_thread(self.release.wait, 60)
        return Response(script.body, status_code=script.status, media_type=script.content_type)


def _verifies(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    try:
        verify(secret, timestamp=timestamp, body=body, signature=signature, now=time.time())
    except SignatureMismatch:
        return False
    return True


@contextlib.contextmanager
def run_lookup_server() -> Iterator[LookupServer]:
    port = free_port()
    server_state = LookupServer(base_url=f"http://127.0.0.1:{port}")
    app = Starlette(routes=[Route("/{path:path}", server_state._lookup, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="lookup-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the lookup server did not start")
        time.sleep(0.01)
    try:
        yield server_state
    finally:
        server_state.release.set()
        server.should_exit = True
        thread.join(timeout=10)
