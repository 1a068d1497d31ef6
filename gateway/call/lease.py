"""Leases on live calls, and finishing the calls whose gateway died.

Every call a gateway serves holds that gateway's lease: the call names the gateway
(`served_by`), and the gateway beats one heartbeat document (`GatewayLease`). The beat is
written from a thread with its own connection, so however busy the event loop is, the
calls keep their lease; it stops only when the event loop itself stops turning, or the
process dies.

`LostCallSweeper`, in every gateway, finishes a call as `failed` / `gateway-lost` (or as the
carrier said it ended, if a status callback recorded that while it was served) once its
gateway's heartbeat has not changed for a whole lease, as this sweeper saw it on its own
clock: no two machines' clocks are compared, a gateway that just started (or could not read
the database) waits one lease before it judges anyone, and a sweeper never finishes a call
its own process serves. It also finishes, by `_id`, the calls that ended in its own process
but whose final write failed (`UnfinishedCalls`), as they ended: their lease may never have
been stored, so no search by lease would find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.metrics import GatewayMetrics
from gateway.pricing import EXAMPLE_PRICES, PriceTable, price_call
from storage import (
    CallNotFound,
    CallRecord,
    CallStatus,
    CallStore,
    CallUsage,
    LeaseRepository,
    StorageError,
)

log = logging.getLogger(__name__)

LOST_REASON = "gateway-lost"


@dataclass(frozen=True, slots=True)
class OwnEnding:
    """How a call that ended in this process ended, kept until it is finished in the
    database (its final write failed: the database was away)."""

    status: CallStatus
    reason: str
    ended_at: datetime
    usage: CallUsage | None = None  # with the carrier's seconds


class UnfinishedCalls(Protocol):
    """The calls that ended here unfinished (`LiveCalls`)."""

    def unfinished(self) -> Mapping[str, OwnEnding]:
        """Each such call's id and how it ended (a snapshot)."""
        ...

    def finished(self, call_id: str) -> None:
        """The call is finished in the database now: forget it."""
        ...


class _NoneUnfinished:
    def unfinished(self) -> Mapping[str, OwnEnding]:
        return {}

    def finished(self, call_id: str) -> None:
        pass


class Heartbeat(Protocol):
    """Where a gateway's beats go (`storage.HeartbeatWriter`; blocking calls)."""

    gateway_id: str

    def beat(self, *, at: datetime, lease_s: float) -> None: ...

    def remove(self) -> None: ...

    def close(self) -> None: ...


class GatewayLease:
    """This process's heartbeat: `start()` once the database is open, `stop()` at shutdown
    (after the calls ended); it beats every third of `lease_s`."""

    def __init__(
        self,
        writer: Heartbeat,
        *,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gateway_id = writer.gateway_id
        self._writer = writer
        self._lease_s = lease_s
        self._every_s = lease_s / 3
        self._clock = clock
        self._last_tick = clock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Write the first beat (before any call is taken), then keep beating."""
        await asyncio.to_thread(self._beat)
        self._ticker = asyncio.create_task(self._tick(), name="lease-tick")
        self._thread = threading.Thread(
            target=self._beat_forever, name="gateway-lease", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        self._writer.beat(at=datetime.now(UTC), lease_s=self._lease_s)

    async def _tick(self) -> None:
        """Proof that the event loop turns: the thread beats only while this ticks."""
        while True:
            self._last_tick = self._clock()
            await asyncio.sleep(min(1.0, self._every_s))

    def _beat_forever(self) -> None:
        while not self._stopping.wait(self._every_s):
            self.beat_if_alive()

    def beat_if_alive(self) -> bool:
        """Renew the lease if the event loop turned within half a lease (a stuck loop
        serves no call: its calls must become lost); True if a beat was written."""
        stalled_s = self._clock() - self._last_tick
        if stalled_s > self._lease_s / 2:
            log.error("event loop stalled for %.1f s: the lease is not renewed", stalled_s)
            return False
        try:
            self._beat()
        except StorageError as exc:  # a blip: the next beat may make it in time
            log.warning("renewing the gateway lease failed: %s", exc)
            return False
        return True

    async def stop(self) -> None:
        """Stop beating and remove the heartbeat (the process's calls have ended)."""
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        try:
            await asyncio.to_thread(self._writer.remove)
        except StorageError as exc:  # its calls' lease simply expires
            log.warning("removing the gateway lease failed: %s", exc)
        await asyncio.to_thread(self._writer.close)


def _carried_s(call: CallRecord, ended_at: datetime) -> float:
    """Seconds the carrier carried a lost call: from when it was answered; a call in progress
    with no answer time was answered before that was stored (counted from its start), and
    one never answered carried nothing."""
    if call.answered_at is not None:
        since = call.answered_at
    elif call.status == CallStatus.IN_PROGRESS:
        since = call.started_at
    else:
        return 0.0
    return max(0.0, (ended_at - since).total_seconds())


def _millis(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class BeatWatch:
    """Judges other gateways by their heartbeats as read here: a gateway is dead once the
    beat read for it (or its absence) has not changed for a whole lease on this process's
    own clock (no two machines' clocks are compared; one first seen is judged a lease
    later). Used by the lost-call sweeper and by the campaign dialer's leadership."""

    def __init__(self, *, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_s = lease_s
        self._clock = clock
        # gateway id -> (its last beat as read, when it was first read so)
        self._seen: dict[str, tuple[datetime | None, float]] = {}

    def expired(self, owners: set[str], beats: Mapping[str, datetime]) -> set[str]:
        """Of `owners` (every gateway watched: others are forgotten), those whose beat in
        `beats` (missing: none) has not changed for a lease."""
        now = self._clock()
        for owner in owners:
            beat = beats.get(owner)
            seen = self._seen.get(owner)
            if seen is None or seen[0] != beat:
                self._seen[owner] = (beat, now)
        for gone in set(self._seen) - owners:
            del self._seen[gone]
        return {o for o in owners if now - self._seen[o][1] >= self._lease_s}

    def forget(self) -> None:
        """Reads failed: that time is no evidence, every gateway is judged afresh."""
        self._seen.clear()


class LostCallSweeper:
    """Finishes the calls of gateways that stopped beating (`sweep` is one round; the
    gateway runs one every third of a lease, at most every 10 s)."""

    def __init__(
        self,
        *,
        store: CallStore,
        leases: LeaseRepository,
        gateway_id: str,
        serving: Callable[[str], bool],
        lease_s: float,
        metrics: GatewayMetrics,
        on_lost: Callable[[CallRecord], Awaitable[None]],
        unfinished: UnfinishedCalls | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prices: PriceTable = EXAMPLE_PRICES,
    ) -> None:
        self._store = store
        self._wall_clock = wall_clock  # when a lost call ended (its leases use `clock`)
        self._prices = prices
        self._leases = leases
        self._me = gateway_id
        self._serving = serving
        self._lease_s = lease_s
        self._metrics = metrics
        self._on_lost = on_lost
        self._unfinished = unfinished or _NoneUnfinished()  # ended here, final write failed
        self._watch = BeatWatch(lease_s=lease_s, clock=clock)

    async def sweep(self) -> list[CallRecord]:
        """One round: finish every call that ended here unfinished, then every lost call;
        returns them."""
        finished = await self._finish_own()
        try:
            calls = await self._store.served_calls()
            owners = {c.served_by for c in calls if c.served_by and c.served_by != self._me}
            beats = await self._leases.beats(owners)
        except StorageError:
            # While this sweeper cannot read it sees no beats: that time is no evidence, so
            # every gateway is judged afresh, over a whole lease, once it reads again.
            self._watch.forget()
            raise
        expired = self._watch.expired(owners, beats)
        lost = [
            c
            for c in calls
            if c.served_by in expired
            # Ours but no longer served here: its finish failed (the database was away).
            or (c.served_by == self._me and not self._serving(c.id))
        ]
        for call in lost:
            # How it ended, if known: here (its final write failed, and it ended after the
            # first step of this round), or as the carrier said while its gateway served it.
            own = self._unfinished.unfinished().get(call.id) if call.served_by == self._me else None
            if own is not None:
                if (stored := await self._finish_as_ended(call.id, own)) is not None:
                    finished.append(stored)
                continue
            known = await self._store.carrier_end(call.id)
            status, reason = known if known is not None else (CallStatus.FAILED, LOST_REASON)
            # What its gateway counted died with it: the carrier's minutes, from when it
            # was answered (as its lifecycle counts them), are what is known.
            # At the store's millisecond precision: `stored.ended_at` equals it only if this
            # write finished the call (N workers sweep: another may have won the same call).
            ended_at = _millis(self._wall_clock())
            usage = CallUsage().with_carrier(call.transport, _carried_s(call, ended_at))
            stored = await self._store.finish_call(
                call.id,
                status=status,
                end_reason=reason,
                ended_at=ended_at,
                usage=usage,
                cost=price_call(usage, self._prices, call_id=call.id),
            )
            if stored.end_reason != reason or stored.ended_at != ended_at:
                continue  # finished by its own gateway after all, or by another sweeper
            finished.append(stored)
            self._metrics.calls_lost_total += 1
            log.warning(
                "finished a call whose gateway stopped",
                extra={"call_id": call.id, "served_by": call.served_by},
            )
            try:
                await self._on_lost(call)
            except Exception:  # the call is finished; what its carrier left is logged
                log.exception("cleaning up after a lost call failed", extra={"call_id": call.id})
        self._metrics.lost_call_sweeps_total += 1
        return finished

    async def _finish_own(self) -> list[CallRecord]:
        """Finish, by `_id`, each call that ended here but whose final write failed: its
        lease may never have been stored (the database went away right after the stream
        was claimed), so `served_calls` would never return it."""
        finished = []
        for call_id, ending in list(self._unfinished.unfinished().items()):
            if self._serving(call_id):  # its lifecycle is still ending it
                continue
            if (stored := await self._finish_as_ended(call_id, ending)) is not None:
                finished.append(stored)
        return finished

    async def _finish_as_ended(self, call_id: str, ending: OwnEnding) -> CallRecord | None:
        """Store how a call ended here and forget it; the stored call if this finished it."""
        usage = ending.usage or CallUsage()
        try:
            stored = await self._store.finish_call(
                call_id,
                status=ending.status,
                end_reason=ending.reason,
                ended_at=ending.ended_at,
                usage=usage,
                cost=price_call(usage, self._prices, call_id=call_id),
            )
        except CallNotFound:
            log.warning("a call that ended here is gone", extra={"call_id": call_id})
            self._unfinished.finished(call_id)
            return None
        self._unfinished.finished(call_id)  # finished now, or already was
        if stored.end_reason != ending.reason or stored.ended_at is None:
            return None
        log.info(
            "finished a call that ended here once the database was back",
            extra={"call_id": call_id, "reason": ending.reason},
        )
        return stored
