"""A call's writes (its turns and state), stored one after another beside the conversation:
a bounded queue per call, one writer task, each attempt bounded in time and retried while
the database is away.

The conversation never waits for the database: `submit()` only queues. When the database
comes back, everything queued is written in the order it was submitted. When it refuses
writes for longer than `WritePolicy.outage_s`, or more than `max_pending` writes wait (a
full queue is an outage too: the call cannot keep what it says), the writes are given up:
`on_outage` is called once (the lifecycle ends the call politely), every write still queued
is logged with the call id and what it held, the write in flight is not tried again (logged
the same way unless the attempt under way stores it), and later submissions are logged as
they come.

Order of calls: `start()` once, inside the running loop; `submit()` any number of times;
`drain()` before the call's final write (it returns once the queue is empty or given up);
`aclose()` at the very end.

`WriteBacklog` (one per process, shared by its calls' writers) says how far the database is
behind them: the age of the oldest write queued and not yet stored. Admission refuses new
calls while it is over MAX_WRITE_WAIT_MS, so a database that falls behind under a burst of
arrivals is not handed more calls' writes (`gateway/call/admission.py`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

from storage import StorageError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """How long a call's writes may wait for the database (one per process, from settings)."""

    attempt_timeout_s: float = 3.0
    outage_s: float = 30.0
    max_pending: int = 200
    retry_base_s: float = 0.2
    retry_cap_s: float = 2.0

    def retry_delays(self) -> Iterator[float]:
        """The waits between a write's attempts: `retry_base_s` doubling up to `retry_cap_s`."""
        delay = self.retry_base_s
        while True:
            yield delay
            delay = min(self.retry_cap_s, delay * 2)


class WriteBacklog:
    """The writes of a process's calls queued and not yet stored (or given up), oldest
    first; `oldest_ms()` is O(1)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Insertion ordered, so the first entry is the oldest write still waiting.
        self._since: dict[object, float] = {}

    def add(self, write: object) -> None:
        self._since[write] = self._clock()

    def discard(self, write: object) -> None:
        self._since.pop(write, None)

    @property
    def waiting(self) -> int:
        return len(self._since)

    def oldest_ms(self) -> float:
        """How long the oldest write still waiting has waited (0: none waits)."""
        for since in self._since.values():
            return max(0.0, (self._clock() - since) * 1000.0)
        return 0.0


# eq=False: a write is itself (identity hash), a key of `WriteBacklog`.
@dataclass(frozen=True, slots=True, eq=False)
class _Write:
    what: str
    write: Callable[[], Awaitable[object]]
    detail: Mapping[str, object] | None


class CallWrites:
    """The ordered writes of one call; see the module docstring for the order of calls."""

    def __init__(
        self,
        *,
        call_id: str,
        policy: WritePolicy,
        on_outage: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        backlog: WriteBacklog | None = None,
    ) -> None:
        self._call_id = call_id
        self._backlog = backlog if backlog is not None else WriteBacklog(clock)
        self._policy = policy
        self._on_outage = on_outage
        self._clock = clock
        self._queue: collections.deque[_Write] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failing_since: float | None = None
        self._given_up: str | None = None
        self._in_flight: _Write | None = None  # the write the writer is storing (queue[0])
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def given_up(self) -> bool:
        """True once the outage bound passed (or the queue filled): nothing more is stored."""
        return self._given_up is not None

    def start(self) -> None:
        """Start the writer (once; `submit` starts it if nobody did)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"writes-{self._call_id}")

    def submit(
        self,
        what: str,
        write: Callable[[], Awaitable[object]],
        *,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        """Queue `write` (called afresh for each attempt) after every write submitted before."""
        item = _Write(what, write, detail)
        if self._given_up is not None or self._closed:  # closed: no writer would store it
            self._log_unwritten([item])
            return
        if len(self._queue) >= self._policy.max_pending:
            self._give_up(f"more than {self._policy.max_pending} writes waited", item)
            return
        self._queue.append(item)
        self._backlog.add(item)
        self._idle.clear()
        self._wakeup.set()
        self.start()

    async def drain(self) -> bool:
        """Wait until every write submitted so far is stored (True) or given up (False)."""
        await self._idle.wait()
        return self._given_up is None

    async def aclose(self) -> None:
        """Stop the writer; anything still queued is logged as not written (and so is
        anything submitted later)."""
        self._closed = True
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        finally:
            unwritten = list(self._queue)
            in_flight = self._in_flight
            if in_flight is not None and all(item is not in_flight for item in unwritten):
                unwritten.insert(0, in_flight)  # cut off after a give-up
            self._in_flight = None
            self._queue.clear()
            for item in unwritten:
                self._backlog.discard(item)
            self._log_unwritten(unwritten)
            self._idle.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._in_flight = item = self._queue[0]
            try:
                await self._store(item)
            finally:
                self._backlog.discard(item)  # stored, failed for good, given up or cut off
            self._in_flight = None
            if self._queue and self._given_up is None:
                self._queue.popleft()

    async def _store(self, item: _Write) -> None:
        """Write `item`, retrying until it is stored, fails for good, the outage bound passes,
        or the writes are given up (a full queue) while it is tried."""
        policy = self._policy
        delays = policy.retry_delays()
        attempt = 0
        while True:
            if self._given_up is not None:  # given up between attempts: not tried again
                self._log_unwritten([item])
                return
            attempt += 1
            try:
                async with asyncio.timeout(policy.attempt_timeout_s):
                    await item.write()
            except (StorageError, TimeoutError) as exc:
                if self._given_up is not None:  # given up while this attempt ran
                    self._log_unwritten([item])
                    return
                now = self._clock()
                if self._failing_since is None:
                    self._failing_since = now
                if now - self._failing_since >= policy.outage_s:
                    self._in_flight = None  # logged first with the rest, in order
                    self._give_up(f"the database refused writes for {policy.outage_s:g} s")
                    return
                log.log(
                    logging.WARNING if attempt == 1 else logging.DEBUG,
                    "storing the call's %s failed, retrying: %s",
                    item.what,
                    exc or type(exc).__name__,
                    extra={"call_id": self._call_id, "attempt": attempt},
                )
                await asyncio.sleep(next(delays))
                continue
            except Exception:  # a write no retry can mend: logged, and the rest go on
                log.exception(
                    "storing the call's %s failed for good",
                    item.what,
                    extra={"call_id": self._call_id, "unwritten": item.detail},
                )
                return
            if self._failing_since is not None:
                log.info(
                    "the database is back: the call's writes go on",
                    extra={
                        "call_id": self._call_id,
                        "away_s": round(self._clock() - self._failing_since, 1),
                    },
                )
                self._failing_since = None
            return

    def _give_up(self, reason: str, refused: _Write | None = None) -> None:
        """Once: drop and log every queued write (and `refused`, the one that did not fit)
        but the one in flight, which `_store` logs unless its attempt under way lands."""
        if self._given_up is not None:
            return
        self._given_up = reason
        unwritten = [item for item in self._queue if item is not self._in_flight]
        if refused is not None:
            unwritten.append(refused)
        self._queue.clear()
        for item in unwritten:
            self._backlog.discard(item)
        self._idle.set()
        log.error("the call's writes are given up: %s", reason, extra={"call_id": self._call_id})
        self._log_unwritten(unwritten)
        self._on_outage(reason)

    def _log_unwritten(self, items: list[_Write]) -> None:
        for item in items:
            log.error(
                "not stored: the call's %s",
                item.what,
                extra={"call_id": self._call_id, "unwritten": item.detail},
            )
