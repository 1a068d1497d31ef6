"""A webhook receiver as a CRM would run one: a real HTTP server on 127.0.0.1:0 (uvicorn in
a thread) that verifies each request's signature with the secrets it holds, answers with
scripted status codes, and keeps every request it saw."""

from __future__ import annotations

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
class ReceivedWebhook:
    delivery_id: str
    timestamp: str
    signature: str
    body: bytes
    answered: int
    # Which of the receiver's secrets (`WebhookReceiver.secrets`) verified the request.
    verified_by: tuple[str, ...] = ()
    arrived: float = 0.0  # time.perf_counter() when it arrived (benchmarks)

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class WebhookReceiver:
    url: str
    # Status codes for the coming requests, in order; 200 once they run out.
    script: list[int] = field(default_factory=list)
    received: list[ReceivedWebhook] = field(default_factory=list)
    # Secrets to verify each request with (a receiver mid-rotation holds two).
    secrets: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[ReceivedWebhook]:
        """Requests answered 2xx: what the receiver took in."""
        with self._lock:
            return [r for r in self.received if 200 <= r.answered < 300]

    def wait_accepted(self, count: int = 1, *, within_s: float = 20.0) -> list[ReceivedWebhook]:
        deadline = time.monotonic() + within_s
        while len(self.accepted()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.accepted())} webhooks accepted, not {count}")
            time.sleep(0.05)
        return self.accepted()

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        with self._lock:
            status = self.script.pop(0) if self.script else 200
            verified_by = tuple(s for s in self.secrets if _verifies(s, timestamp, body, signature))
            self.received.append(
                ReceivedWebhook(
                    delivery_id=request.headers.get(ID_HEADER, ""),
                    timestamp=timestamp,
                    signature=signature,
                    body=body,
                    answered=status,
                    verified_by=verified_by,
                    arrived=time.perf_counter(),
                )
            )
        return Response(status_code=status)


def _verifies(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    try:
        verify(secret, timestamp=timestamp, body=body, signature=signature, now=time.time())
    except SignatureMismatch:
        return False
    return True


@contextlib.contextmanager
def run_webhook_receiver(path: str = "/hooks/call-ended") -> Iterator[WebhookReceiver]:
    port = free_port()
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{port}{path}")
    app = Starlette(routes=[Route(path, receiver._hook, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="webhook-receiver", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the webhook receiver did not start")
        time.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        thread.join(timeout=10)
