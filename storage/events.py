"""Call events, stored once each in one sequence per organisation, so that any gateway can
stream them in order and resume after an id.

FerretDB 1.24 answers only `_id` equality in SQL; every other filter or sort reads the
whole collection in Go. So an event's `_id` *is* its place: `<org>:<seq>` with `seq`
counting 1, 2, 3, ... per organisation, and every read here is a lookup by `_id`:

- publish: insert `<org>:<head + 1>`; if another gateway took that place first (the insert
  is FerretDB's one atomic check-and-set), find the head again by a galloping search from
  there (other gateways may have stored many since this process's hint) and insert after
  it. A place is taken by one insert
  and never freed, so a reader that found `n` can rely on `n + 1` being the next event.
  Within one process an organisation's places are taken by one place-taker task, which
  stores every event queued by then in one ordered insert at consecutive places:
  concurrent publishers of one process would all try the same place and all but one would
  search the head again, a storm that grows with the calls talking at once (a quarter of a
  talking call's CPU at 32 calls), and one insert each in turn could not keep up with
  hundreds of calls starting. Only other processes collide. An insert that fails keeps
  the events stored before the failure (an ordered insert stops there; found by the
  duplicate's index, else by looking the places up); if another process took the next
  place the rest go after the head, else they fail with the error and their publishers
  retry.
- read after `n`: look up `n + 1`, `n + 2`, ... until one is missing (after the first
  found, several at once). A poll that finds nothing new costs one lookup, however many
  events are stored (the embedded FerretDB build uses the `_id` index for it:
  scripts/ensure-ferretdb.sh).
- the head (where a reader starts, where a process starts numbering): a galloping search
  over lookups, O(log n), once per organisation per process.

An event also has a `key` (e.g. `<call>_call_turn_3`) naming what it reports, so publishing
the same fact again (a retry, a restarted worker) returns the event stored before. The
event is inserted before its key, under `asyncio.shield`: a caller cancelled in between
(a write's timeout) does not cut the two apart, so its retry finds the key. Only a process
that dies between the two inserts can leave an event without its key, and then its next
publish makes one duplicate (read out like any event). Two publishers racing with the same
key both insert; the loser's event keeps its place (no gap) but is marked and never read.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from storage.calls import _driver_errors, _stored_time, _utc
from storage.documents import CallDocument

EVENTS = "events"
EVENT_KEYS = "event_keys"
# The indexes `open_database` creates: reads go by `_id`; these serve MongoDB queries by
# call (an operator's tools, the API) and never the stream.
EVENT_INDEXES: dict[str, list[IndexModel]] = {
    EVENTS: [
        IndexModel([("call_id", ASCENDING), ("seq", ASCENDING)], name="call_seq"),
        IndexModel([("org_id", ASCENDING), ("at", ASCENDING)], name="org_at"),
    ],
}
_NO_ORG = "-"  # calls of no organisation (no assistant, no default organisation)
_READ_MAX = 500
_READ_WINDOW = 16  # lookups in flight at once when reading a run of new events
# Events stored in one insert at most. FerretDB 1.24 inserts in chunks of 100 and honours
# `ordered` only within one: past a duplicate in the first chunk it still stores the next
# chunk (measured), which would store those events twice.
_PLACE_BATCH = 100
_DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored event: `seq` is its place in its organisation's sequence (the SSE id);
    `body` is the JSON text webhooks and streams send as it is."""

    seq: int
    org_id: str | None
    call_id: str
    type: str
    key: str
    at: datetime
    body: str


def _events() -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[EVENTS]


def _keys() -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[EVENT_KEYS]


def _place(org_id: str | None, seq: int) -> str:
    return f"{org_id or _NO_ORG}:{seq}"


def _record(raw: dict[str, Any]) -> EventRecord:
    at = _utc(raw["at"])
    assert at is not None
    return EventRecord(
        seq=int(raw["seq"]),
        org_id=raw.get("org_id"),
        call_id=str(raw["call_id"]),
        type=str(raw["type"]),
        key=str(raw["key"]),
        at=at,
        body=str(raw["body"]),
    )


class EventRepository:
    """The organisations' event sequences (on the database `open_database` opened)."""

    def __init__(self) -> None:
        # The highest place this process knows is taken, per organisation: a hint only
        # (places are only ever added), found again by search when missing.
        self._heads: dict[str, int] = {}
        self._head_locks: dict[str, asyncio.Lock] = {}
        # Events waiting for a place, per organisation, and the task storing them
        # (`_take_place`).
        self._queued: dict[str, list[tuple[dict[str, Any], asyncio.Future[int]]]] = {}
        self._takers: dict[str, asyncio.Task[None]] = {}

    @_driver_errors
    async def publish(
        self,
        *,
        key: str,
        org_id: str | None,
        call_id: str,
        type: str,
        body: str,
        at: datetime,
        fresh: bool = False,
    ) -> EventRecord:
        """Store the event `key` names at the end of its organisation's sequence, or return
        the one stored before under `key`. Shielded: a cancelled caller does not stop it
        between the event and its key (see the module's docstring). `fresh`: the key is new
        as far as the caller knows, so it is not looked up first (one read fewer); if it was
        stored after all, the key's insert says so and the earlier event is returned."""
        task = asyncio.ensure_future(
            self._publish(
                key=key, org_id=org_id, call_id=call_id, type=type, body=body, at=at, fresh=fresh
            )
        )
        task.add_done_callback(_seen)  # its failure, once no caller awaits it any more
        return await asyncio.shield(task)

    async def _publish(
        self,
        *,
        key: str,
        org_id: str | None,
        call_id: str,
        type: str,
        body: str,
        at: datetime,
        fresh: bool,
    ) -> EventRecord:
        before = None if fresh else await self._by_key(key)
        if before is not None:
            return before
        org = org_id or _NO_ORG
        doc = {
            "org_id": org_id,
            "call_id": call_id,
            "type": type,
            "key": key,
            "at": _stored_time(at),
            "body": body,
        }
        seq = await self._take_place(org, org_id, doc)
        try:
            await _keys().insert_one({"_id": key, "seq": seq, "org_id": org_id})
        except DuplicateKeyError:
            # Published at the same time elsewhere: the other one stands; ours keeps its
            # place (no gap for readers) but is never read out.
            await _events().update_one({"_id": _place(org_id, seq)}, {"$set": {"dup": True}})
            other = await self._by_key(key)
            if other is not None:
                return other
        return _record({"seq": seq, **doc})

    async def _take_place(self, org: str, org_id: str | None, doc: dict[str, Any]) -> int:
        """Store `doc` at the next free place of the organisation's sequence; its place.
        One place-taker task per organisation stores every event queued by then in one
        ordered insert, at consecutive places (a group commit): the events of many calls
        talking at once cost one round trip, not one each in turn."""
        placed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(org, []).append((doc, placed))
        if org not in self._takers:
            self._takers[org] = asyncio.create_task(
                self._take_queued(org, org_id), name=f"event-places-{org}"
            )
        return await placed

    async def _take_queued(self, org: str, org_id: str | None) -> None:
        """Store what is queued for `org`, a batch at a time, until nothing is."""
        try:
            while queued := self._queued.get(org):
                batch, self._queued[org] = queued[:_PLACE_BATCH], queued[_PLACE_BATCH:]
                # A failure reached the batch's publishers (each retries); go on.
                with contextlib.suppress(Exception):
                    self._queued[org][:0] = await self._store_batch(org, org_id, batch)
        finally:
            del self._takers[org]
            for _, placed in self._queued.pop(org, []):  # only if this task was cancelled
                placed.set_exception(RuntimeError("the event store stopped"))

    async def _store_batch(
        self, org: str, org_id: str | None, batch: list[tuple[dict[str, Any], asyncio.Future[int]]]
    ) -> list[tuple[dict[str, Any], asyncio.Future[int]]]:
        """Store `batch` at the places after the head, in one ordered insert; the events
        left to place again because another process took a place first."""
        try:
            seq = await self._known_head(org) + 1
            docs = [
                {"_id": _place(org_id, seq + i), "seq": seq + i, **doc}
                for i, (doc, _) in enumerate(batch)
            ]
            failure: PyMongoError | None = None
            taken_at: int | None = None  # the index of a place another process took
            try:
                await _events().insert_many(docs, ordered=True)
                stored = len(batch)
            except PyMongoError as exc:  # an ordered insert keeps those before the failure
                failure = exc
                taken_at = _duplicate_at(exc)
                stored = taken_at if taken_at is not None else await _stored_before(docs)
            for i, (_, placed) in enumerate(batch[:stored]):
                placed.set_result(seq + i)
            if stored:
                self._heads[org] = max(self._heads.get(org, 0), seq + stored - 1)
            if stored == len(batch):
                return []
            if taken_at is None:
                assert failure is not None
                raise failure
            # `seq + stored` was taken by another process: the rest go after the head as
            # it is now.
            head = await self._head_from(org, seq + stored)
            self._heads[org] = max(self._heads.get(org, 0), head)
            return batch[stored:]
        except BaseException as exc:  # every event of the batch still waiting fails with it
            error = exc if isinstance(exc, Exception) else RuntimeError("the event store stopped")
            for _, placed in batch:
                if not placed.done():
                    placed.set_exception(error)
            raise

    async def _by_key(self, key: str) -> EventRecord | None:
        found = await _keys().find_one({"_id": key})
        if found is None:
            return None
        raw = await _events().find_one({"_id": _place(found.get("org_id"), int(found["seq"]))})
        return _record(raw) if raw is not None else None

    @_driver_errors
    async def published(self, key: str) -> bool:
        """Whether the fact `key` names has its event stored (one read by `_id`)."""
        return await _keys().find_one({"_id": key}, {"_id": 1}) is not None

    @_driver_errors
    async def get(self, org_id: str | None, seq: int) -> EventRecord | None:
        """The event at `seq` of the organisation's sequence (None: no such place yet)."""
        raw = await _events().find_one({"_id": _place(org_id, seq)})
        return _record(raw) if raw is not None and not raw.get("dup") else None

    @_driver_errors
    async def read_after(
        self, org_id: str | None, seq: int, *, limit: int = 100
    ) -> tuple[list[EventRecord], int]:
        """The events after place `seq`, in order (at most `limit`), and the last place read
        (to read after next time; duplicates are passed over but counted)."""
        out: list[EventRecord] = []
        last, left, window = seq, min(limit, _READ_MAX), 1
        while left > 0:
            # One lookup while nothing is new (an idle poll); then windows of lookups at
            # once, growing to `_READ_WINDOW`, of which the places up to the first one
            # missing are taken (later ones are read next time).
            window = min(window, left)
            found = await asyncio.gather(
                *(
                    _events().find_one({"_id": _place(org_id, last + i)})
                    for i in range(1, window + 1)
                )
            )
            taken = 0
            for raw in found:
                if raw is None:
                    break
                taken += 1
                if not raw.get("dup"):
                    out.append(_record(raw))
            last, left = last + taken, left - taken
            if taken < window:
                break
            window = min(window * 4, _READ_WINDOW)
        org = org_id or _NO_ORG
        if last > self._heads.get(org, 0):
            self._heads[org] = last
        return out, last

    @_driver_errors
    async def head(self, org_id: str | None) -> int:
        """The last place taken in the organisation's sequence (0: none), as of now."""
        org = org_id or _NO_ORG
        known = await self._known_head(org)
        while await _events().find_one({"_id": f"{org}:{known + 1}"}, {"_id": 1}) is not None:
            known += 1
        self._heads[org] = known
        return known

    async def _known_head(self, org: str) -> int:
        """The hint, or (once per organisation and process) the head found by a galloping
        search over `_id` lookups."""
        if org in self._heads:
            return self._heads[org]
        lock = self._head_locks.setdefault(org, asyncio.Lock())
        async with lock:
            if org not in self._heads:
                self._heads[org] = await self._search_head(org)
            return self._heads[org]

    async def _search_head(self, org: str) -> int:
        if not await _taken(org, 1):
            return 0
        return await self._head_from(org, 1)

    async def _head_from(self, org: str, seq: int) -> int:
        """The head, knowing `seq` is taken: a galloping search of `_id` lookups forward
        from it (steps 1, 2, 4, ...), then a binary search of the last step: O(log d)
        lookups for `d` places taken since."""
        low, step = seq, 1  # low is taken; find a high that is not
        while await _taken(org, low + step):
            low, step = low + step, step * 2
        high = low + step
        while high - low > 1:  # low taken, high free
            mid = (low + high) // 2
            if await _taken(org, mid):
                low = mid
            else:
                high = mid
        return low


def _duplicate_at(failure: PyMongoError) -> int | None:
    """The index of the document an insert met a taken `_id` at (None: another failure)."""
    if isinstance(failure, BulkWriteError):
        errors = failure.details.get("writeErrors") or [{}]
        if errors[0].get("code") == _DUPLICATE_KEY and "index" in errors[0]:
            return int(errors[0]["index"])
    return None


async def _stored_before(docs: list[dict[str, Any]]) -> int:
    """How many of `docs` an ordered insert that failed otherwise (a command error, a
    connection lost mid-insert) stored: each place is looked up until one does not hold
    its own event (raises if the database is away)."""
    stored = 0
    for doc in docs:
        found = await _events().find_one({"_id": doc["_id"]}, {"key": 1})
        if found is None or found.get("key") != doc["key"]:
            break
        stored += 1
    return stored


def _seen(task: asyncio.Future[Any]) -> None:
    """Mark a shielded publish's exception as retrieved: its caller may have been cancelled
    (or the process be stopping, the database closed) and raised it already, or never will."""
    if not task.cancelled():
        task.exception()


async def _taken(org: str, seq: int) -> bool:
    return await _events().find_one({"_id": f"{org}:{seq}"}, {"_id": 1}) is not None
