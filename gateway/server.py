"""uvicorn's server for the gateway: it ends the live event streams as shutdown begins.

uvicorn (0.54) stops accepting, then waits for every open response to finish before it
runs the app's lifespan shutdown; an event stream never finishes by itself, so without
this a SIGTERM would wait forever (or for `timeout_graceful_shutdown`, then cut them).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn


class GatewayServer(uvicorn.Server):
    """A `uvicorn.Server` that calls `before_shutdown` (synchronously) when it starts to
    shut down, before it waits for open connections; and `on_started`, if given, once it
    serves (a worker of `serve --workers N` tells its supervisor)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        before_shutdown: Callable[[], None],
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._before_shutdown()
        await super().shutdown(sockets)
