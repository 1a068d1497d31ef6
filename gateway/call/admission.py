"""Admission control: whether this process takes one more call, decided with no I/O before
any work is done for the call, so that the calls it serves never pay for the ones it cannot.

A process is full when any of these bounds is reached:
- live calls: the calls it serves (`LiveCalls`, a call counts from `take()` until its final
  write) plus the calls it has admitted whose leg has not arrived yet (a Twilio call
  between its voice webhook and its media stream, an outbound Twilio call while it rings),
  at `MAX_LIVE_CALLS` places. A LiveKit room call (SIP, web, outbound) holds
  `LIVEKIT_CALL_WEIGHT` places: its WebRTC stack in the process costs
  several Twilio calls, and a bound counted in calls let rooms in until every room's
  audio broke up. A call is taken while its places fit (one room always fits an empty
  process, whatever the weight);
- event-loop lag: `LoopLagMonitor` wakes every `interval_s` and records how late it woke;
  when the `quantile` of its last `window` samples is over `MAX_LOOP_LAG_MS`, the loop is
  already late for the calls it has (their 20 ms frames go out late), whatever their count;
- the database behind: a write of one of its calls (a turn, an event, the call's state) has
  waited more than `MAX_WRITE_WAIT_MS` to be stored (`WriteBacklog`). Under a burst of
  arrivals the embedded store falls behind before the loop does; each new call adds about
  eight writes before its first exchange, and live calls whose writes keep failing end.

A refusal is answered the way each carrier understands (the routes do it: `<Reject
reason="busy"/>` for Twilio, 503 + Retry-After for the API and LiveKit's webhook), logged,
counted per carrier and cause (`GatewayMetrics.calls_refused`), and stored as
`busy`/`gateway-full` when the call has a record (`record_refused_call`).

`StreamSlots` bounds the other thing a flood can make a process hold: Media Stream sockets
upgraded but not yet started (each also closed after STREAM_START_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.call.lifecycle import LiveCalls
from gateway.call.writes import WriteBacklog
from gateway.errors import GatewayFull
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

GATEWAY_FULL = "gateway-full"  # the end reason of a refused call

# Why a call was refused; the carrier (or API route) that brought it.
RefusalCause = Literal["live-calls", "loop-lag", "write-backlog"]
Arrival = Literal["twilio", "livekit", "outbound", "web"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call this process does not take, and the figures it was judged on."""

    cause: RefusalCause
    live: int  # places held (a room call holds `room_weight`)
    max_live: int
    lag_ms: float
    max_lag_ms: float
    write_wait_ms: float = 0.0
    max_write_wait_ms: float | None = None
    weight: int = 1  # the places the refused call would have held

    def log_fields(self) -> dict[str, object]:
        return {
            "cause": self.cause,
            "live_calls": self.live,
            "max_live_calls": self.max_live,
            "call_weight": self.weight,
            "loop_lag_ms": round(self.lag_ms, 1),
            "max_loop_lag_ms": self.max_lag_ms,
            "write_wait_ms": round(self.write_wait_ms, 1),
            "max_write_wait_ms": self.max_write_wait_ms,
        }


class LoopLagMonitor:
    """How late this process's event loop runs: `run()` sleeps `interval_s` again and again
    and records how much later than asked it woke; `lag_ms` is the `quantile` of the last
    `window` such delays (a lone pause, a GC or a model load, does not count; a loop that
    stays late does). `clock` and `sleep` are injectable for tests."""

    def __init__(
        self,
        *,
        interval_s: float = 0.05,
        window: int = 40,
        quantile: float = 0.9,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        if not 0 < quantile <= 1 or window < 1 or interval_s <= 0:
            raise ValueError("interval_s > 0, window >= 1, 0 < quantile <= 1")
        self.interval_s = interval_s
        self._samples: deque[float] = deque(maxlen=window)
        self._rank = max(0, min(window - 1, int(quantile * window + 0.5) - 1))
        self._clock = clock
        self._sleep = sleep
        self._on_lag = on_lag
        self.lag_ms = 0.0  # updated per sample, read in O(1)

    def observe(self, delay_ms: float) -> None:
        """One sample: the loop woke `delay_ms` after it was due."""
        self._samples.append(max(0.0, delay_ms))
        ordered = sorted(self._samples)  # `window` floats, 20 times a second
        # Until the window is full the missing samples count as 0 (a fresh process is idle).
        rank = self._rank - (self._samples.maxlen or 0) + len(ordered)
        self.lag_ms = ordered[rank] if rank >= 0 else 0.0
        if self._on_lag is not None:
            self._on_lag(self.lag_ms)

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            due = self._clock() + self.interval_s
            await self._sleep(self.interval_s)
            self.observe((self._clock() - due) * 1000.0)


class Admission:
    """The admission check of one process: `admit()` takes a call or says why not."""

    def __init__(
        self,
        *,
        live: LiveCalls,
        max_live_calls: int,
        lag: LoopLagMonitor,
        max_loop_lag_ms: float,
        metrics: GatewayMetrics | None = None,
        backlog: WriteBacklog | None = None,
        max_write_wait_ms: float | None = None,
    ) -> None:
        """`backlog`, `max_write_wait_ms`: the calls' writes and how long one may wait
        (None: the database's pace is not judged)."""
        self._live = live
        self.backlog = backlog if backlog is not None else WriteBacklog()
        self.max_write_wait_ms = max_write_wait_ms
        self._metrics = metrics
        self.max_live_calls = max_live_calls
        self.lag = lag
        self.max_loop_lag_ms = max_loop_lag_ms
        # Refused calls waiting to be stored or being stored (the routes bound it), and the
        # one store that runs at a time: a flood of refusals is a queue of single writes.
        self.refusals_storing = 0
        self.refusal_writes = asyncio.Semaphore(1)

    @property
    def room_weight(self) -> int:
        """The places a LiveKit room call holds (`LIVEKIT_CALL_WEIGHT`)."""
        return self._live.room_weight

    def refusal(self, weight: int = 1) -> Refusal | None:
        """Why one more call, holding `weight` places, cannot be taken now (None: it can).
        No I/O; the places held for calls on their way are summed (at most the bound)."""
        live, lag_ms = self._live.occupancy(), self.lag.lag_ms
        wait_ms, max_wait_ms = self.backlog.oldest_ms(), self.max_write_wait_ms
        cause: RefusalCause | None = None
        if live + min(weight, self.max_live_calls) > self.max_live_calls:
            cause = "live-calls"
        elif lag_ms > self.max_loop_lag_ms:
            cause = "loop-lag"
        elif max_wait_ms is not None and wait_ms > max_wait_ms:
            cause = "write-backlog"
        if cause is None:
            return None
        return Refusal(
            cause,
            live,
            self.max_live_calls,
            lag_ms,
            self.max_loop_lag_ms,
            wait_ms,
            max_wait_ms,
            weight,
        )

    def admit(self, key: str, *, hold_s: float, weight: int = 1) -> Refusal | None:
        """Take the call `key` (a CallSid, a room, a request's own key) if there is room:
        its place is held at once, with no await between the check and the hold (so a burst
        cannot slip past the bound), until its leg is taken (`LiveCalls.add` frees places
        held under its call id or CallSid), `release(key)`, or `hold_s` passes. `weight`:
        the places it holds (`room_weight` for a LiveKit room call)."""
        refused = self.refusal(weight)
        if refused is None:
            self._live.expect(key, hold_s=hold_s, weight=weight)
        return refused

    def admit_held(self, key: str, *, hold_s: float) -> None:
        """Hold a place for a call already admitted under another key (an outbound call,
        once stored, under its call id), whatever the bound says now."""
        self._live.expect(key, hold_s=hold_s)

    def release(self, key: str) -> None:
        """Give up the place held for `key` (taken by its call, or never to be used)."""
        self._live.release(key)

    def require(
        self, key: str, *, hold_s: float, arrival: Arrival, retry_after_s: int, weight: int = 1
    ) -> None:
        """`admit()`, refusing with `GatewayFull` (503 + Retry-After at the HTTP edge),
        logged and counted under `arrival`."""
        refused = self.admit(key, hold_s=hold_s, weight=weight)
        if refused is None:
            return
        self.refused(refused, arrival=arrival, key=key)
        raise GatewayFull(refused.cause, retry_after_s=retry_after_s)

    def refused(self, refusal: Refusal, *, arrival: Arrival, key: str) -> None:
        """Log and count a refusal (`key`: the CallSid, room or request refused)."""
        if self._metrics is not None:
            self._metrics.call_refused(arrival, refusal.cause)
        log.warning(
            "call refused: the gateway is full",
            extra={"arrival": arrival, "admission_key": key, **refusal.log_fields()},
        )


class StreamSlots:
    """Media Stream sockets accepted but not started, at most `limit` at once: an upgrade
    beyond it is refused before it is accepted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0

    def open(self) -> bool:
        """Take a slot for a new socket (False: none is free)."""
        if self.pending >= self.limit:
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        """The socket started its call, or closed: its slot is free."""
        self.pending = max(0, self.pending - 1)
