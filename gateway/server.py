"""uvicorn's server for the gateway: SIGTERM drains it first, and it ends the live event
streams as shutdown begins.

uvicorn (0.54) on SIGTERM stops accepting at once, asks every connection to close, waits
for open responses (Media Streams sockets included) up to `timeout_graceful_shutdown`,
then cuts them, and at exit raises the signal again (the process dies of it). Here
SIGTERM first runs `drain` with the listener still open (`/ready` answers 503 so the
balancer stops sending; live calls go on to their end, bounded: `gateway/drain.py`), and
only then does uvicorn's shutdown run; the process exits 0. A second SIGTERM cuts the
drain short; SIGINT (Ctrl-C) stops at once, as uvicorn does.

An event stream never finishes by itself, so without `before_shutdown` the shutdown would
wait forever for it (or for `timeout_graceful_shutdown`, then cut them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class GatewayServer(uvicorn.Server):
    """A `uvicorn.Server` that drains on SIGTERM (`drain`, awaited while it still serves),
    calls `before_shutdown` (synchronously) when it starts to shut down, before it waits for
    open connections, and `on_started`, if given, once it serves (a worker of `serve
    --workers N` tells its supervisor)."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        before_shutdown: Callable[[], None],
        drain: Callable[[], Awaitable[None]] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown
        self._on_started = on_started
        self._drain = drain
        self._drain_asked = False
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _freeze_startup_heap()
        if self.started and self._on_started is not None:
            self._on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags; `on_tick` (in the loop) starts the drain.
        if sig == signal.SIGTERM and self._drain is not None:
            if self._drain_asked:  # a second SIGTERM: stop now
                self.should_exit = True
            self._drain_asked = True
            return  # not kept in `_captured_signals`: the process exits 0, not by SIGTERM
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_asked and self._draining is None and self._drain is not None:
            self._draining = asyncio.create_task(self._run_drain(self._drain), name="drain")
        return await super().on_tick(counter)

    async def _run_drain(self, drain: Callable[[], Awaitable[None]]) -> None:
        try:
            await drain()
        except Exception:  # the drain's task ends here: logged, and the server stops anyway
            log.exception("draining failed")
        finally:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._draining is not None and not self._draining.done():  # cut short
            self._draining.cancel()
            await asyncio.gather(self._draining, return_exceptions=True)
        self._before_shutdown()
        await super().shutdown(sockets)


def _freeze_startup_heap() -> None:
    """Collect once, then put every object alive now out of the garbage collector's reach
    (`gc.freeze`). What the process loaded to serve (modules, SDKs, schemas, turn models:
    195 000 objects with the local providers, more with the cloud SDKs) lives as long as it
    does, yet each full collection walked all of it besides what the calls made: 90-120 ms
    with the event loop stopped, every second or two at 100 talking calls, and each such
    stop made every call's outbound audio late (5-30 ms since)."""
    gc.collect()
    gc.freeze()
    log.info("startup heap frozen", extra={"objects": gc.get_freeze_count()})
