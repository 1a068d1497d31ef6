"""The live event feed of one gateway process: one poller per organisation that has a client
here, fanning the organisation's stored events out to its subscriptions (`GET /events`).

Events reach the feed two ways: `published(event)`, called in this process right after an
event is stored (the call publisher's `on_published`), hands it over at once; events stored
by other gateways are read by the poller every `poll_s` (`read_after` from the last place:
one `_id` lookup when nothing is new, however many events are stored).

Each subscription has a bounded buffer. The poller never waits for a client: a subscription
whose buffer is full is dropped (its stream ends; the client resumes from its last id), so
a client that stops reading never slows the others. A subscription that resumes after an id
first reads the events it missed itself, at its own pace, then takes live ones from the
poller; its cursor makes every event reach it once, in order.

Order of calls: `subscribe()` (async: may find the head), then `Subscription.next()` until
it raises `StreamEnded`, then `Subscription.close()` (always; it is idempotent).
`aclose()` at shutdown ends every subscription and stops every poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import GatewayError
from storage import EventRecord, EventRepository, StorageError

log = logging.getLogger(__name__)

EndReason = Literal["dropped", "closed"]
_READ_BATCH = 200


class StreamEnded(GatewayError):  # a normal end, not a failure
    """The subscription is over: `dropped` (its buffer filled) or `closed` (shutdown)."""

    def __init__(self, reason: EndReason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class _Org:
    """One organisation's poller and its subscriptions."""

    org_id: str | None
    last: int  # the last place the poller has read (or been handed in order)
    subscribers: set[Subscription] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Subscription:
    """One client's view of its organisation's events (optionally one call's), in order."""

    def __init__(
        self,
        feed: EventFeed,
        org: _Org,
        *,
        after: int,
        caught_up: bool,
        call_id: str | None,
        buffer: int,
    ) -> None:
        self._feed = feed
        self._org = org
        self.cursor = after  # the last place this subscription has taken (sent or skipped)
        self._caught_up = caught_up
        self.call_id = call_id
        self._buffer: deque[EventRecord] = deque()
        self._limit = buffer
        self._ready = asyncio.Event()
        self.ended: EndReason | None = None
        self.dropped = asyncio.Event()  # set when dropped for not reading

    @property
    def org_id(self) -> str | None:
        return self._org.org_id

    def _wants(self, event: EventRecord) -> bool:
        return self.call_id is None or event.call_id == self.call_id

    def _offer(self, events: list[EventRecord]) -> bool:
        """Take the poller's new events (those after the cursor); False once dropped."""
        if not self._caught_up or self.ended is not None:
            return self.ended is None
        for event in events:
            if event.seq <= self.cursor:
                continue
            self.cursor = event.seq
            if not self._wants(event):
                continue
            if len(self._buffer) >= self._limit:
                self._end("dropped")
                return False
            self._buffer.append(event)
            self._ready.set()
        return True

    def _end(self, reason: EndReason) -> None:
        if self.ended is None:
            self.ended = reason
            if reason == "dropped":
                self.dropped.set()
            self._ready.set()

    async def next(self, *, wait_s: float) -> list[EventRecord]:
        """The next events, in order, or [] when none came within `wait_s` (time for a
        heartbeat; also while catching up over events `?call_id=` filters out, or proxies
        would cut a stream that writes nothing). Raises `StreamEnded` once the subscription
        is over: closed at once, dropped after what it had buffered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            if self.ended == "closed":
                raise StreamEnded("closed")
            if self._buffer:
                out = list(self._buffer)
                self._buffer.clear()
                return out
            if self.ended is not None:
                raise StreamEnded(self.ended)
            if not self._caught_up:
                missed = await self._catch_up()
                if missed:
                    return missed
                if loop.time() >= deadline:
                    return []
                continue
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return []

    async def _catch_up(self) -> list[EventRecord]:
        """Read one batch of the events missed since the cursor; once the cursor reaches
        where the poller is, the poller hands this subscription the rest."""
        before = self.cursor
        events, last = await self._feed.read(self._org.org_id, before, limit=_READ_BATCH)
        found = [e for e in events if self._wants(e)]
        self.cursor = max(before, last)
        # At the poller's place (or at the end of what is stored): live from here on, with
        # no await between this check and the poller's next hand-over.
        if self.cursor >= self._org.last or self.cursor == before:
            self._caught_up = True
        return found

    def close(self) -> None:
        """Leave the feed (idempotent): the last subscription of an organisation stops
        its poller."""
        self._end("closed")
        self._feed._leave(self)


class EventFeed:
    """Live events for this process's `GET /events` clients (see the module docstring)."""

    def __init__(
        self,
        repo: EventRepository,
        *,
        poll_s: float,
        buffer: int,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self.repo = repo
        self._poll_s = poll_s
        self._buffer = buffer
        # A poll hands each client at most this many events at once, so a burst larger
        # than its buffer does not drop a client that reads.
        self._batch = min(_READ_BATCH, buffer)
        self._on_drop = on_drop
        self._orgs: dict[str | None, _Org] = {}
        self._closed = False

    @property
    def subscriptions(self) -> int:
        return sum(len(org.subscribers) for org in self._orgs.values())

    @property
    def pollers(self) -> int:
        return sum(org.task is not None and not org.task.done() for org in self._orgs.values())

    async def subscribe(
        self, org_id: str | None, *, after: int | None = None, call_id: str | None = None
    ) -> Subscription:
        """A subscription to `org_id`'s events after place `after` (None: from now on; the
        caller checks `after` is at most the head). Raises `StorageError` if the head
        cannot be read. After `aclose()` the subscription is closed at once."""
        org = self._orgs.get(org_id)
        if org is None:
            head = await self.repo.head(org_id)
            org = self._orgs.get(org_id)  # another client may have started it meanwhile
            if org is None:
                org = _Org(org_id, last=head)
                self._orgs[org_id] = org
        start = org.last if after is None else after
        sub = Subscription(
            self,
            org,
            after=start,
            caught_up=start >= org.last,
            call_id=call_id,
            buffer=self._buffer,
        )
        if self._closed:
            sub._end("closed")
            return sub
        org.subscribers.add(sub)
        if org.task is None:
            org.task = asyncio.create_task(self._poll(org), name=f"event-feed-{org_id}")
        return sub

    async def read(
        self, org_id: str | None, after: int, *, limit: int
    ) -> tuple[list[EventRecord], int]:
        """`repo.read_after`, past stored events that cannot be read: one whose document the
        repository cannot make a record of (malformed: written by hand, or by another
        version) is skipped with an error log, so it stalls no stream forever. Raises
        `StorageError` (the store is unreachable) when nothing could be read."""
        try:
            return await self.repo.read_after(org_id, after, limit=limit)
        except StorageError:
            raise
        except Exception:  # noqa: BLE001 - which place is bad is found below, one at a time
            pass
        out: list[EventRecord] = []
        last = after
        while last - after < limit:
            try:
                events, new_last = await self.repo.read_after(org_id, last, limit=1)
            except StorageError:
                if out:
                    break
                raise
            except Exception:
                log.exception(
                    "event %d of the organisation cannot be read: skipped",
                    last + 1,
                    extra={"org_id": org_id},
                )
                last += 1
                continue
            if new_last == last:
                break  # nothing more is stored
            out += events
            last = new_last
        return out, last

    def published(self, event: EventRecord) -> None:
        """An event this process has just stored: clients here get it at once (in order:
        the next place is handed over directly, anything else wakes the poller)."""
        org = self._orgs.get(event.org_id)
        if org is None:
            return
        if event.seq == org.last + 1:
            org.last = event.seq
            self._fan_out(org, [event])
        elif event.seq > org.last:
            org.wake.set()

    def _fan_out(self, org: _Org, events: list[EventRecord]) -> None:
        for sub in list(org.subscribers):
            if not sub._offer(events):
                org.subscribers.discard(sub)
                self._on_drop()
                log.warning(
                    "event stream dropped: its client did not read %d events",
                    self._buffer,
                    extra={"org_id": org.org_id, "call_id": sub.call_id},
                )
        if not org.subscribers:
            org.wake.set()  # the poller sees it has no one left

    def _leave(self, sub: Subscription) -> None:
        org = sub._org
        org.subscribers.discard(sub)
        if not org.subscribers:
            org.wake.set()

    async def _poll(self, org: _Org) -> None:
        """Read the organisation's new events until it has no subscriber left."""
        try:
            while org.subscribers:
                org.wake.clear()
                before = org.last
                try:
                    events, last = await self.read(org.org_id, org.last, limit=self._batch)
                except StorageError as exc:
                    log.warning("reading events failed: %s", exc, extra={"org_id": org.org_id})
                    events, last = [], org.last
                except Exception:  # a bug: the poller lives on, and tries again after a poll
                    log.exception("reading events failed", extra={"org_id": org.org_id})
                    events, last = [], org.last
                if last > org.last:
                    org.last = last
                    self._fan_out(org, events)
                    if last - before >= self._batch:
                        continue  # more may be waiting
                if not org.subscribers:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(org.wake.wait(), self._poll_s)
        finally:
            if self._orgs.get(org.org_id) is org and not org.subscribers:
                del self._orgs[org.org_id]
            org.task = None

    async def aclose(self) -> None:
        """End every subscription (`closed`) and stop every poller; later subscriptions
        are closed at once."""
        self._closed = True
        tasks = []
        for org in list(self._orgs.values()):
            for sub in list(org.subscribers):
                sub._end("closed")
            org.subscribers.clear()
            org.wake.set()
            if org.task is not None:
                org.task.cancel()
                tasks.append(org.task)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._orgs.clear()

    def close_streams(self) -> None:
        """End every subscription now (shutdown has begun); the pollers stop on their own."""
        self._closed = True
        for org in self._orgs.values():
            for sub in list(org.subscribers):
                sub._end("closed")
            org.subscribers.clear()
            org.wake.set()
