"""Request bodies capped before anything parses them: a pure ASGI middleware that refuses a
body over its route's cap with 413, on its Content-Length when it declares one, else by
counting the bytes as they stream in (chunked bodies too).

Pure ASGI rather than `BaseHTTPMiddleware`: it must see `receive` itself, and it adds no
task or buffering of its own. WebSockets and lifespan pass through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import BodyTooLarge, error_response

log = logging.getLogger(__name__)


class BodySizeLimit:
    """Caps the body of every HTTP request at `limit_for(path)` bytes.

    A declared Content-Length over the cap is answered at once (nothing is read); a body
    that grows past it while streaming raises `BodyTooLarge` out of `receive()` in the
    route (the app's error handlers answer 413), or is answered here if nothing was sent.
    """

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self._limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            log.info(
                "request body refused on its length",
                extra={"path": scope["path"], "length": declared, "limit": limit},
            )
            await error_response(413, "too_large", str(BodyTooLarge(limit)))(scope, receive, send)
            return
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            log.info("request body refused while streaming", extra={"path": scope["path"]})
            await error_response(413, "too_large", str(exc))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None
