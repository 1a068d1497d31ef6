"""Draining: what a gateway does between SIGTERM and its exit, so that a restart or a
scale-down behind a balancer loses no call.

`Draining` is the one flag: once set, `/ready` answers 503 `draining` (the balancer stops
sending), `/health` stays 200 but says `draining` (a liveness probe must not kill a
process whose calls are still talking), and every request that would start a call
(`Draining.refuse_new_call()`: a new Twilio call, an outbound or web call, a LiveKit SIP
participant) answers 503 + Retry-After, which a balancer retries on another gateway. What
belongs to calls already taken (their media streams, status callbacks, the API) is served
as usual. `drain_calls()` lets the live calls go on to their own end for up to
`DRAIN_TIMEOUT_S`, then the agent says goodbye on each one left and it ends as
`gateway-shutdown`; then the server stops (`gateway/server.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.call.lifecycle import LiveCalls
from gateway.errors import GatewayDraining

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "gateway-shutdown"
SHUTDOWN_GOODBYE = (
    "I am sorry, I have to end this call now because this line is being restarted. "
    "Please call again. Goodbye."
)


class Draining:
    """Whether this process drains; set once, never cleared (the process is on its way out).
    Read by `/health`, `/ready` and every place that starts a call."""

    def __init__(self) -> None:
        self._since: float | None = None

    @property
    def active(self) -> bool:
        return self._since is not None

    def begin(self) -> bool:
        """Start draining; False if it had started already."""
        if self._since is not None:
            return False
        self._since = time.monotonic()
        return True

    def refuse_new_call(self) -> None:
        """Raise `GatewayDraining` (503 + Retry-After) if this process drains."""
        if self._since is not None:
            raise GatewayDraining("this gateway is shutting down: try another")


async def drain_calls(
    live: LiveCalls,
    draining: Draining,
    *,
    timeout_s: float,
    goodbye_timeout_s: float,
    goodbye: str = SHUTDOWN_GOODBYE,
) -> None:
    """Drain: refuse new calls from now on, wait up to `timeout_s` for the live calls to
    end by themselves, then end the rest politely and wait up to `goodbye_timeout_s` (plus
    a little for their final writes) for them; whatever is still live after that is ended
    at once by the lifespan's shutdown."""
    if not draining.begin():
        return
    started = time.monotonic()
    log.info("draining: no new calls", extra={"live_calls": live.count(), "timeout_s": timeout_s})
    try:
        async with asyncio.timeout(timeout_s):
            await live.none_left()
        log.info("drained: every call ended", extra={"drain_s": time.monotonic() - started})
        return
    except TimeoutError:
        pass
    calls = live.snapshot()
    log.warning("drain timeout: ending the calls left", extra={"live_calls": len(calls)})
    for call in calls:
        call.end_politely(goodbye, SHUTDOWN_REASON)
    try:
        async with asyncio.timeout(goodbye_timeout_s + 10.0):  # the goodbye, then final writes
            await live.none_left()
    except TimeoutError:
        log.error("calls still live after their goodbye", extra={"live_calls": live.count()})
    log.info("drained", extra={"drain_s": time.monotonic() - started})
