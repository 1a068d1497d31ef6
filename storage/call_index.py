"""Keys that let FerretDB answer the call path by `_id`, so no operation on a call reads the
whole history: the calls list, a status callback's lookup by the carrier's id, a call's turns.

FerretDB 1.24 on SQLite answers only `_id` equality in SQL (its build here uses the `_id`
index: scripts/ensure-ferretdb.sh); any other filter or sort decodes every document in Go.
So, as events do (`storage.events`), what the call path looks up is kept under `_id`s that
can be enumerated. The same keys are written and read on MongoDB, so both stores answer
the same; MongoDB keeps its own indexes on the calls for other tools.

- `call_index`: one entry per call, `<org>:<n>` with `n` = 1, 2, 3, ... per organisation in
  the order the calls were stored (a place is taken by one insert and never freed, as an
  event's). An entry holds the call's id, its start (ms), its assistant and direction
  (which never change), its final status once it is finished (`s`; without it the call
  is read to know), and `m`, the greatest (start, id) of entries 1..n: `m` never
  decreases with `n`, so a cursor's place is found by binary search over lookups. An
  entry whose (start, id) is below `m` of the entry before it came "late" (another
  gateway's clock, a call stored with an old start): it is marked, and also listed at
  `<org>:late:<k>`. The entries not late are in (start, id) order, so a page is: binary
  search to the cursor, walk down taking the first matches, merged with the matching
  late entries. Each call read is checked against the whole filter on its document.
  Entries are also copied 16 at a time into blocks `<org>:b:<k>` once settled, and
  summarised: `<org>:s2:<k>` holds, for each of blocks 16k .. 16k+15, how many of its
  entries (not late) have each final status, assistant and direction, and its last `m`;
  `<org>:s3:<k>` the same for each 256-entry unit under it (4 096 entries). Both are
  stored by the first reader who finds everything under them stored, and never change,
  so a process keeps what it read (`_CACHED`). A filtered walk passes over the units whose
  summary holds no match and reads only the blocks it needs: a rare filter costs a few
  summaries, not the whole history.
- `call_sids`: `_id` = the carrier's call id, naming the newest call with it.
- `turn_slots`: `_id` = `<call id>:<index>`, naming the turn stored at that position: the
  insert is what claims the position; a call's turns are its slots 0, 1, 2, ...
- `call_egress`: `_id` = a LiveKit egress id, naming the call it records.
- `open_calls`, `owed_reports`, `owed_analyses`: one row (`_id` = the call id) per call that
  a gateway serves / whose report is owed / whose analysis is owed, so the sweeper, the
  outbox and the analyst read what is live or owed, never every call. A row is a hint
  written before the flag on the call (the call stays the truth, read by `_id`); a reader
  drops a row whose call lacks the flag once the row is `_SETTLE_S` old (younger: the
  flag's write may be under way).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.documents import CallDocument, MigrationDocument, TurnDocument

CALL_INDEX = "call_index"
CALL_SIDS = "call_sids"
TURN_SLOTS = "turn_slots"
CALL_EGRESS = "call_egress"
OPEN_CALLS = "open_calls"
OWED_REPORTS = "owed_reports"
OWED_ANALYSES = "owed_analyses"
FLAG_ROWS = (OPEN_CALLS, OWED_REPORTS, OWED_ANALYSES)
_SETTLE_S = 60.0
NO_ORG = "-"  # calls of no organisation
BACKFILL = "call_index_v1"  # the migration that keys the calls stored before these keys
_BACKFILL_CLAIM = BACKFILL + ".claim"
_BACKFILL_RETRY_S = 600.0  # a claim older than this was left by a process that died
_WINDOW = 64  # lookups in flight at once when walking entries or slots
# Entries are also read 16 at a time from a block `<org>:b:<k>` (entries 16k+1 .. 16k+16),
# a copy a reader stores once they are all there and settled (finished, or a day old).
_BLOCK = 16
_SETTLED_MS = 24 * 3600 * 1000
_CACHED = 1024  # blocks and summaries kept in the process (about 12 MB at most)
_PLAN_MAX = 64  # blocks read at once by a page
_ENTRIES2 = _BLOCK * _BLOCK  # entries under a level-2 summary
_ENTRIES3 = _ENTRIES2 * _BLOCK  # entries under a level-3 summary

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Key = tuple[int, str]  # (start in ms since the epoch, call id): the calls list's order


def _collection(name: str) -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[name]


def millis(value: datetime) -> int:
    """`value` (aware) as whole ms since the epoch (what BSON stores)."""
    return (value - _EPOCH) // timedelta(milliseconds=1)


async def last_taken(taken: Callable[[int], Awaitable[bool]], known: int, first: int) -> int:
    """The last place taken of a run that starts at `first` and has no gaps, knowing `known`
    is taken (`first - 1`: nothing known): a galloping search of lookups forward from it
    (steps 1, 2, 4, ...), then a binary search of the last step: O(log d) lookups for `d`
    places taken since."""
    low, step = known, 1
    while await taken(low + step):
        low, step = low + step, step * 2
    high = low + step
    while high - low > 1:  # low taken (or before the first), high free
        mid = (low + high) // 2
        if await taken(mid):
            low = mid
        else:
            high = mid
    return low


class CallIndex:
    """The calls' `_id` keys (see the module's docstring), with this process's hints of
    where each organisation's sequence ends (a hint only: places are only ever added)."""

    def __init__(self) -> None:
        self._heads: dict[str, int] = {}
        self._stored: OrderedDict[str, Any] = OrderedDict()  # blocks and summaries read

    # -- the organisations' sequences

    async def _entry(self, seq: str, n: int) -> dict[str, Any] | None:
        return await _collection(CALL_INDEX).find_one({"_id": f"{seq}:{n}"})

    async def _taken(self, seq: str, n: int) -> bool:
        found = await _collection(CALL_INDEX).find_one({"_id": f"{seq}:{n}"}, {"_id": 1})
        return found is not None

    async def _taken_id(self, key: str) -> bool:
        return await _collection(CALL_INDEX).find_one({"_id": key}, {"_id": 1}) is not None

    async def head(self, seq: str) -> int:
        """The last place taken in `seq` as of now (0: none): one lookup when the hint is
        current."""
        known = self._heads.get(seq, 0)
        head = await last_taken(lambda n: self._taken(seq, n), known, 1)
        self._heads[seq] = max(head, self._heads.get(seq, 0))
        return head

    async def _append(self, seq: str, fields: dict[str, Any]) -> int:
        n = await self.head(seq) + 1
        while True:
            try:
                await _collection(CALL_INDEX).insert_one({"_id": f"{seq}:{n}", **fields})
            except DuplicateKeyError:  # taken by another gateway: after the head as it is now
                n = await self.head(seq) + 1
                continue
            self._heads[seq] = max(n, self._heads.get(seq, 0))
            return n

    async def add_call(
        self,
        *,
        org_id: str | None,
        call_id: str,
        started_at: datetime,
        assistant_id: str | None,
        direction: str,
        final_status: str | None = None,
    ) -> str:
        """Key a call about to be stored (before its document: an entry whose call was never
        stored is passed over by readers); returns its entry's `_id`."""
        org = org_id or NO_ORG
        key: Key = (millis(started_at), call_id)
        fields = {"call_id": call_id, "t": key[0], "a": assistant_id, "d": direction}
        final = {"s": final_status} if final_status is not None else {}
        n = await self.head(org) + 1
        while True:
            before = await self._entry(org, n - 1) if n > 1 else None
            high: Key | None = (int(before["m"][0]), str(before["m"][1])) if before else None
            late = high is not None and key < high
            if late:
                # Listed with the late ones first: an entry marked late but not listed there
                # would be lost to readers, one listed twice is read once.
                await self._append(f"{org}:late", fields)
            top = max(high, key) if high is not None else key
            try:
                await _collection(CALL_INDEX).insert_one(
                    {"_id": f"{org}:{n}", **fields, **final, "late": late, "m": list(top)}
                )
            except DuplicateKeyError:
                n = await self.head(org) + 1
                continue
            self._heads[org] = max(n, self._heads.get(org, 0))
            return f"{org}:{n}"

    async def finished(self, index_key: str, status: str) -> None:
        """The call of entry `index_key` is finished with `status` (which never changes)."""
        await _collection(CALL_INDEX).update_one({"_id": index_key}, {"$set": {"s": status}})

    def _cached(self, key: str) -> Any:
        found = self._stored.get(key)
        if found is not None:
            self._stored.move_to_end(key)
        return found

    def _keep(self, key: str, value: Any) -> None:
        """Keep a stored block or summary (never changed once stored) in the process."""
        self._stored[key] = value
        self._stored.move_to_end(key)
        while len(self._stored) > _CACHED:
            self._stored.popitem(last=False)

    async def _block(self, org: str, k: int, head: int) -> list[dict[str, Any] | None]:
        """Entries `16k+1 .. 16k+16` (those up to `head`), in order: its block once it exists
        (kept in the process: a stored block never changes), else each entry (then the block
        is stored, if it is complete and settled, for the next reader)."""
        first = _BLOCK * k + 1
        last = min(first + _BLOCK - 1, head)
        key = f"{org}:b:{k}"
        entries: list[dict[str, Any] | None] | None = self._cached(key)
        if entries is None:
            block = await _collection(CALL_INDEX).find_one({"_id": key})
            if block is not None:
                entries = list(block["e"])
                self._keep(key, entries)
        if entries is not None:
            return entries[: last - first + 1]
        got = list(await asyncio.gather(*(self._entry(org, n) for n in range(first, last + 1))))
        if last == first + _BLOCK - 1 and all(e is not None and _settled(e) for e in got):
            with contextlib.suppress(DuplicateKeyError):
                await _collection(CALL_INDEX).insert_one({"_id": key, "e": got})
            self._keep(key, got)
        return got

    async def _summaries(self, org: str, level: int, k: int) -> list[Summary] | None:
        """The summaries of the 16 units under summary `k` of `level` (2: of blocks
        `16k .. 16k+15`; 3: of the level-2 units `16k .. 16k+15`), once all of them are
        stored; built from them (and stored) by the first reader who finds them all."""
        key = f"{org}:s{level}:{k}"
        cached: list[Summary] | None = self._cached(key)
        if cached is not None:
            return cached
        stored = await _collection(CALL_INDEX).find_one({"_id": key})
        if stored is not None:
            units: list[Summary] = [_summary_of(raw) for raw in stored["e"]]
            self._keep(key, units)
            return units
        below = range(_BLOCK * k, _BLOCK * (k + 1))
        if level == 2:
            blocks = [self._cached(f"{org}:b:{b}") for b in below]
            if any(b is None for b in blocks):
                newest = f"{org}:b:{below[-1]}"  # the one most likely not stored yet
                if blocks[-1] is None and not await self._taken_id(newest):
                    return None
                raws = await asyncio.gather(
                    *(_collection(CALL_INDEX).find_one({"_id": f"{org}:b:{b}"}) for b in below)
                )
                if any(r is None for r in raws):
                    return None
                blocks = [list(r["e"]) for r in raws if r is not None]
            units = [_summarise(block) for block in blocks if block is not None]
        else:
            parts: list[list[Summary]] = []
            for unit in reversed(below):  # newest first: the first one missing ends it
                part = await self._summaries(org, level - 1, unit)
                if part is None:
                    return None
                parts.insert(0, part)
            units = [_merge(p) for p in parts]
        with contextlib.suppress(DuplicateKeyError):
            await _collection(CALL_INDEX).insert_one(
                {"_id": key, "e": [_summary_raw(u) for u in units]}
            )
        self._keep(key, units)
        return units

    async def _m_at(self, org: str, n: int) -> Key | None:
        """`m` of entry `n` (None: no entry), from a block this process keeps when it can."""
        if n % _BLOCK == 0:
            block = self._cached(f"{org}:b:{n // _BLOCK - 1}")
            if block is not None and block[-1] is not None:
                return _key(block[-1]["m"])
        entry = await self._entry(org, n)
        return _key(entry["m"]) if entry is not None else None

    async def _last_below(self, org: str, head: int, bound: Key) -> int:
        """The last place whose `m` is below `bound` (0: none): a binary search over the
        blocks' last entries, then one block."""
        if head == 0:
            return 0

        async def below(n: int) -> bool:
            m = await self._m_at(org, n)
            return m is not None and m < bound

        low, high = -1, (head - 1) // _BLOCK + 1  # blocks: low's last entry below, high's not
        if await below(head):
            return head
        while high - low > 1:
            mid = (low + high) // 2
            end = min(_BLOCK * (mid + 1), head)
            if await below(end):
                low = mid
            else:
                high = mid
        entries = await self._block(org, high, head)
        place = _BLOCK * high
        for offset, entry in enumerate(entries, start=1):
            if entry is not None and _key(entry["m"]) < bound:
                place = _BLOCK * high + offset
        return place

    async def _plan(
        self,
        org: str,
        n: int,
        head: int,
        need: int,
        bound: Callable[[Summary], int] | None,
        not_before_ms: int | None,
        guess_max: int,
    ) -> tuple[list[int], int]:
        """Which blocks to read, top down from place `n`, for `need` more matches: blocks
        whose summary says they hold none are passed over (whole units of 256 and 4 096
        entries at once), and the plan ends once the summaries promise `need` (a block with
        no summary may hold 16; at most `guess_max` of those). Summaries are read only for a
        filter (`bound`: at most how many entries of a unit fit it; None: any entry does)
        and for units that end at or below `head`. Returns the blocks and the place below
        them (0: none left: the history ended, or the rest starts before
        `not_before_ms`)."""
        selective = bound is not None
        plan: list[int] = []
        promised, unknown = 0, 0
        k = (n - 1) // _BLOCK  # the block of place n (complete below n only if n ends it)
        units2: dict[int, list[Summary] | None] = {}
        units3: dict[int, list[Summary] | None] = {}
        while k >= 0 and promised < need and len(plan) < _PLAN_MAX and unknown < guess_max:
            whole = n >= _BLOCK * (k + 1)
            unit = k // _BLOCK
            if selective and whole and (k + 1) % _BLOCK == 0:
                # Block k ends a 256-entry unit below n: pass over whole units of those
                # the 4 096-entry summary above them says hold no match.
                top3 = unit // _BLOCK
                if top3 not in units3:
                    complete = head >= _ENTRIES3 * (top3 + 1)
                    units3[top3] = await self._summaries(org, 3, top3) if complete else None
                top = units3[top3]
                skipped = False
                while top is not None and unit >= _BLOCK * top3:
                    summary = top[unit % _BLOCK]
                    if not_before_ms is not None and summary.m[0] < not_before_ms:
                        return plan, 0
                    if bound is None or bound(summary) > 0:
                        break
                    unit, k, skipped = unit - 1, k - _BLOCK, True
                if skipped:
                    continue
            if selective and whole and unit not in units2:
                complete = head >= _ENTRIES2 * (unit + 1)
                units2[unit] = await self._summaries(org, 2, unit) if complete else None
            summaries = units2.get(unit) if whole else None
            if summaries is not None:
                summary = summaries[k % _BLOCK]
                if not_before_ms is not None and summary.m[0] < not_before_ms:
                    return plan, 0
                fits = bound(summary) if bound is not None else summary.n
            else:
                fits, unknown = _BLOCK, unknown + 1
            if fits > 0:
                plan.append(k)
                promised += fits
            k -= 1
        return plan, _BLOCK * (k + 1)

    async def page(
        self,
        org_id: str,
        *,
        limit: int,
        before: Key | None,
        not_before_ms: int | None,
        assistant_id: str | None,
        direction: str | None,
        status: str | None,
        accept: Callable[[CallDocument], bool],
    ) -> list[CallDocument]:
        """The organisation's first `limit` calls (newest first, by (start, id)) below
        `before`, starting at or after `not_before_ms`, whose entry has `assistant_id`,
        `direction` and (if it says) `status` (None: any) and whose document `accept`s."""

        def fits(entry: dict[str, Any]) -> bool:
            key = (int(entry["t"]), str(entry["call_id"]))
            return (
                (before is None or key < before)
                and (not_before_ms is None or key[0] >= not_before_ms)
                and (assistant_id is None or entry.get("a") == assistant_id)
                and (direction is None or entry.get("d") == direction)
                and (status is None or entry.get("s") in (None, status))
            )

        def bound(summary: Summary) -> int:
            """At most how many entries of the unit can fit the filter."""
            counts = [summary.n]
            if assistant_id is not None:
                counts.append(summary.a.get(assistant_id, 0))
            if direction is not None:
                counts.append(summary.d.get(direction, 0))
            if status is not None:
                counts.append(summary.s.get(status, 0) + summary.s.get(None, 0))
            return min(counts)

        async def documents(entries: list[dict[str, Any]]) -> list[CallDocument]:
            calls = CallDocument.get_pymongo_collection()
            raws = await asyncio.gather(
                *(calls.find_one({"_id": ObjectId(str(e["call_id"]))}) for e in entries)
            )
            docs = [CallDocument.model_validate(raw) for raw in raws if raw is not None]
            return [d for d in docs if accept(d)]

        org = org_id
        late_head, head = await asyncio.gather(self.head(f"{org}:late"), self.head(org))
        found: dict[str, CallDocument] = {}
        # The late ones: all of them (few; a store fed calls out of order pays here).
        late: list[dict[str, Any]] = []
        for start in range(1, late_head + 1, _WINDOW):
            got = await asyncio.gather(
                *(
                    self._entry(f"{org}:late", n)
                    for n in range(start, min(start + _WINDOW, late_head + 1))
                )
            )
            late.extend(e for e in got if e is not None and fits(e))
        for doc in await documents(late):
            found[str(doc.id)] = doc
        # The ones in order, from the cursor's place down: the blocks the summaries say may
        # hold matches, as many as the page still lacks; calls read only for those taken.
        n = head if before is None else await self._last_below(org, head, before)
        taken, guess_max = 0, (limit + 1) // _BLOCK + 2
        while n >= 1 and taken < limit + 1:
            need = limit + 1 - taken
            selective = assistant_id is not None or direction is not None or status is not None
            ks, rest = await self._plan(
                org, n, head, need, bound if selective else None, not_before_ms, guess_max
            )
            guess_max = min(2 * guess_max, _PLAN_MAX)
            read = await asyncio.gather(*(self._block(org, k, n) for k in ks))
            wanted: list[dict[str, Any]] = []
            below = rest
            places = (
                (_BLOCK * k + 1 + offset, block[offset])
                for k, block in zip(ks, read, strict=True)
                for offset in range(len(block) - 1, -1, -1)
            )
            for place, entry in places:
                if entry is None or entry.get("late"):
                    continue
                if not_before_ms is not None and int(entry["t"]) < not_before_ms:
                    below = 0  # in order: every entry below starts earlier still
                    break
                if fits(entry):
                    wanted.append(entry)
                    if len(wanted) == need:
                        below = place - 1
                        break
            n = below
            for doc in await documents(wanted):
                if str(doc.id) not in found:
                    found[str(doc.id)] = doc
                    taken += 1
        docs = sorted(found.values(), key=_doc_key, reverse=True)
        return docs[: limit + 1]

    # -- carrier ids

    async def note_sid(self, call_sid: str, call_id: str, started_at: datetime) -> None:
        """The call `call_id` has the carrier id `call_sid`: named by it if it is the newest."""
        key: Key = (millis(started_at), call_id)
        sids = _collection(CALL_SIDS)
        for _ in range(5):
            current = await sids.find_one({"_id": call_sid})
            if current is None:
                try:
                    await sids.insert_one({"_id": call_sid, "call_id": call_id, "t": key[0]})
                except DuplicateKeyError:
                    continue
                return
            if (int(current["t"]), str(current["call_id"])) >= key:
                return
            await sids.update_one({"_id": call_sid}, {"$set": {"call_id": call_id, "t": key[0]}})
            return

    async def call_by_sid(self, call_sid: str) -> str | None:
        found = await _collection(CALL_SIDS).find_one({"_id": call_sid})
        return str(found["call_id"]) if found is not None else None

    # -- turn positions

    async def claim_turn(self, call_id: str, index: int, turn_id: str) -> bool:
        """Take position `index` of the call for `turn_id` (False: taken already)."""
        try:
            await _collection(TURN_SLOTS).insert_one(
                {"_id": f"{call_id}:{index}", "turn_id": turn_id}
            )
        except DuplicateKeyError:
            return False
        return True

    async def next_turn_index(self, call_id: str) -> int:
        """The first position of the call not taken (slots run 0, 1, 2, ... with no gap)."""

        async def taken(index: int) -> bool:
            found = await _collection(TURN_SLOTS).find_one(
                {"_id": f"{call_id}:{index}"}, {"_id": 1}
            )
            return found is not None

        return await last_taken(taken, -1, 0) + 1

    async def turns(self, call_id: str) -> list[TurnDocument]:
        """The call's stored turns in order, read by `_id` only."""
        slots: list[dict[str, Any]] = []
        start, window = 0, 8
        while True:
            got = await asyncio.gather(
                *(
                    _collection(TURN_SLOTS).find_one({"_id": f"{call_id}:{i}"})
                    for i in range(start, start + window)
                )
            )
            present = [s for s in got if s is not None]
            slots.extend(present)
            if len(present) < window:
                break
            start, window = start + window, _WINDOW
        ids = list(dict.fromkeys(str(s["turn_id"]) for s in slots))
        docs = await asyncio.gather(*(TurnDocument.get(PydanticObjectId(i)) for i in ids))
        return sorted((d for d in docs if d is not None), key=lambda d: d.index)

    # -- egress ids

    async def note_egress(self, egress_id: str, call_id: str) -> None:
        await _collection(CALL_EGRESS).update_one(
            {"_id": egress_id}, {"$set": {"call_id": call_id}}, upsert=True
        )

    async def call_by_egress(self, egress_id: str) -> str | None:
        found = await _collection(CALL_EGRESS).find_one({"_id": egress_id})
        return str(found["call_id"]) if found is not None else None

    # -- rows of the calls live or owed something

    async def mark(self, rows: str, call_id: str, *, at: datetime) -> None:
        """The call is (about to be) flagged `rows` (written before the flag)."""
        await _collection(rows).update_one({"_id": call_id}, {"$set": {"at": at}}, upsert=True)

    async def unmark(self, rows: str, call_id: str) -> None:
        await _collection(rows).delete_one({"_id": call_id})

    async def flagged(
        self,
        rows: str,
        has_flag: Callable[[CallDocument], bool],
        *,
        limit: int,
        now: datetime,
    ) -> list[CallDocument]:
        """Up to `limit` calls of the rows `rows` that have the flag (`has_flag`); rows of
        calls without it are dropped once settled. Reads the rows (what is live or owed),
        then the calls by `_id`."""
        marked = await _collection(rows).find({}).to_list()
        out: list[CallDocument] = []
        for start in range(0, len(marked), _WINDOW):
            chunk = marked[start : start + _WINDOW]
            docs = await asyncio.gather(
                *(CallDocument.get(PydanticObjectId(str(row["_id"]))) for row in chunk)
            )
            for row, doc in zip(chunk, docs, strict=True):
                if doc is not None and has_flag(doc):
                    out.append(doc)
                    continue
                at = row.get("at")
                if isinstance(at, datetime) and (now - _aware(at)).total_seconds() >= _SETTLE_S:
                    await _collection(rows).delete_one({"_id": row["_id"], "at": at})
            if len(out) >= limit:
                break
        return out[:limit]

    # -- what was stored before the keys

    async def backfill(self, *, now: datetime) -> int:
        """Key the calls and turns stored before these keys existed (once per database; a
        process that died half-way is taken over after `_BACKFILL_RETRY_S`). Returns how
        many calls it keyed."""
        if await MigrationDocument.get(BACKFILL) is not None:
            return 0
        claims = MigrationDocument.get_pymongo_collection()
        try:
            await claims.insert_one({"_id": _BACKFILL_CLAIM, "done_at": now})
        except DuplicateKeyError:
            claim = await claims.find_one({"_id": _BACKFILL_CLAIM})
            at = claim.get("done_at") if claim is not None else None
            if at is not None and at.tzinfo is None:
                at = at.replace(tzinfo=UTC)
            if at is not None and (now - at).total_seconds() < _BACKFILL_RETRY_S:
                return 0  # another process is at it
            await claims.update_one({"_id": _BACKFILL_CLAIM}, {"$set": {"done_at": now}})
        keyed = await self._backfill()
        await MigrationDocument(id=BACKFILL, done_at=now).insert()
        return keyed

    async def _backfill(self) -> int:
        index = _collection(CALL_INDEX)
        have = {str(e["call_id"]) async for e in index.find({}, {"call_id": 1})}
        calls = CallDocument.get_pymongo_collection()
        fields = {
            "org_id": 1,
            "status": 1,
            "started_at": 1,
            "assistant_id": 1,
            "direction": 1,
            "call_sid": 1,
            "recording.egress_id": 1,
            "ended_at": 1,
            "served_by": 1,
            "report_pending": 1,
            "analysis_pending": 1,
        }
        flagged = {
            OPEN_CALLS: {"ended_at": None, "served_by": {"$ne": None}},
            OWED_REPORTS: {"report_pending": True},
            OWED_ANALYSES: {"analysis_pending": True},
        }
        now = datetime.now(UTC)
        for rows, query in flagged.items():
            async for raw in calls.find(query, {"_id": 1}):
                await self.mark(rows, str(raw["_id"]), at=now)
        todo: list[dict[str, Any]] = [
            raw async for raw in calls.find({}, fields) if str(raw["_id"]) not in have
        ]
        todo.sort(key=lambda raw: (millis(_aware(raw["started_at"])), str(raw["_id"])))
        for raw in todo:
            started = _aware(raw["started_at"])
            await self.add_call(
                org_id=raw.get("org_id"),
                call_id=str(raw["_id"]),
                started_at=started,
                assistant_id=raw.get("assistant_id"),
                direction=str(raw.get("direction", "inbound")),
                final_status=str(raw["status"]) if raw.get("ended_at") is not None else None,
            )
            if raw.get("call_sid"):
                await self.note_sid(str(raw["call_sid"]), str(raw["_id"]), started)
            egress = (raw.get("recording") or {}).get("egress_id")
            if egress:
                await self.note_egress(str(egress), str(raw["_id"]))
        turns = TurnDocument.get_pymongo_collection()
        async for raw in turns.find({}, {"call_id": 1, "index": 1}):
            await self.claim_turn(str(raw["call_id"]), int(raw["index"]), str(raw["_id"]))
        return len(todo)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _key(raw: list[Any]) -> Key:
    return (int(raw[0]), str(raw[1]))


def _settled(entry: dict[str, Any]) -> bool:
    """Whether an entry will not change: its call is finished (or a day old)."""
    now_ms = millis(datetime.now(UTC))
    return "s" in entry or int(entry["t"]) < now_ms - _SETTLED_MS


@dataclass(frozen=True, slots=True)
class Summary:
    """What a unit of entries (a block, 256 or 4 096 of them) holds, to pass it over: its
    entries not late (`n`), of them how many per final status (None: not finished when
    the block was stored), assistant and direction, and `m` of its last entry."""

    n: int
    s: dict[str | None, int]
    a: dict[str | None, int]
    d: dict[str | None, int]
    m: Key


def _count(into: dict[str | None, int], value: Any) -> None:
    key = None if value is None else str(value)
    into[key] = into.get(key, 0) + 1


def _summarise(block: list[dict[str, Any] | None]) -> Summary:
    s: dict[str | None, int] = {}
    a: dict[str | None, int] = {}
    d: dict[str | None, int] = {}
    n = 0
    for entry in block:
        if entry is None or entry.get("late"):
            continue
        n += 1
        _count(s, entry.get("s"))
        _count(a, entry.get("a"))
        _count(d, entry.get("d"))
    last = block[-1]
    assert last is not None  # a stored block is complete
    return Summary(n=n, s=s, a=a, d=d, m=_key(last["m"]))


def _merge(parts: list[Summary]) -> Summary:
    s: dict[str | None, int] = {}
    a: dict[str | None, int] = {}
    d: dict[str | None, int] = {}
    for part in parts:
        for into, counts in ((s, part.s), (a, part.a), (d, part.d)):
            for value, count in counts.items():
                into[value] = into.get(value, 0) + count
    return Summary(n=sum(p.n for p in parts), s=s, a=a, d=d, m=parts[-1].m)


def _summary_raw(summary: Summary) -> dict[str, Any]:
    """As stored: each count as a list of values and one of their counts (a value may not be
    a field name, and FerretDB stores no arrays in arrays)."""
    raw: dict[str, Any] = {"n": summary.n, "m": list(summary.m)}
    for name, counts in (("s", summary.s), ("a", summary.a), ("d", summary.d)):
        raw[name] = list(counts)
        raw[name + "n"] = list(counts.values())
    return raw


def _summary_of(raw: dict[str, Any]) -> Summary:
    def counts(name: str) -> dict[str | None, int]:
        values, numbers = raw[name], raw[name + "n"]
        return {
            (None if v is None else str(v)): int(c) for v, c in zip(values, numbers, strict=True)
        }

    return Summary(n=int(raw["n"]), s=counts("s"), a=counts("a"), d=counts("d"), m=_key(raw["m"]))


def _doc_key(doc: CallDocument) -> Key:
    return (millis(_aware(doc.started_at)), str(doc.id))


BulkCall = tuple[str | None, str, datetime, str | None, str, str | None]


def index_entries(calls: list[BulkCall]) -> list[dict[str, Any]]:
    """Entries keying `calls` (org, call id, start, assistant, direction, final status or
    None) in a store with no entries yet, for bulk loading (benchmarks): what `add_call`
    would store one by one (a call's `index_key` is its entry's `_id`)."""
    out: list[dict[str, Any]] = []
    per_org: dict[str, tuple[int, Key | None]] = {}
    for org_id, call_id, started_at, assistant_id, direction, final in sorted(
        calls, key=lambda c: (millis(c[2]), c[1])
    ):
        org = org_id or NO_ORG
        n, high = per_org.get(org, (0, None))
        key: Key = (millis(started_at), call_id)
        top = max(high, key) if high is not None else key
        out.append(
            {
                "_id": f"{org}:{n + 1}",
                "call_id": call_id,
                "t": key[0],
                "a": assistant_id,
                "d": direction,
                **({"s": final} if final is not None else {}),
                "late": False,
                "m": list(top),
            }
        )
        per_org[org] = (n + 1, top)
    return out


# -- conditional writes of one document

_FERRETDB: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()


async def _is_ferretdb(collection: AsyncCollection[dict[str, Any]]) -> bool:
    """Whether the server is FerretDB (its `buildInfo` says so); asked once per client."""
    client = collection.database.client
    known = _FERRETDB.get(client)
    if known is None:
        info = await collection.database.command("buildInfo")
        known = _FERRETDB[client] = "ferretdbVersion" in info
    return known


def _holds(doc: dict[str, Any], guard: dict[str, Any]) -> bool:
    """Whether `doc` matches `guard`: top-level fields equal to a value (None: missing or
    null) or `{"$in": [...]}`, the forms the conditional writes here use."""
    for name, want in guard.items():
        have = doc.get(name)
        if isinstance(want, dict):
            if set(want) != {"$in"}:
                raise ValueError(f"unsupported guard {want!r}")
            if have not in want["$in"]:
                return False
        elif have != want:
            return False
    return True


async def update_if(
    collection: AsyncCollection[dict[str, Any]],
    doc_id: Any,
    guard: dict[str, Any],
    fields: dict[str, Any],
) -> bool:
    """`$set` `fields` on document `doc_id` if it matches `guard`; whether it did.

    On MongoDB one conditional update (atomic). FerretDB 1.24 answers in SQL only a filter
    that is `_id` alone, and applies any update by reading the document and writing it back
    whole (not atomic either way), so there the document is read by `_id`, checked here and
    written by `_id`: the same outcome, without reading every document of the collection.
    Callers hold the document's write lock (`storage.calls.call_write_lock`).
    """
    if not await _is_ferretdb(collection):
        result = await collection.update_one({"_id": doc_id, **guard}, {"$set": fields})
        return result.matched_count > 0
    doc = await collection.find_one({"_id": doc_id}, dict.fromkeys(guard, 1))
    if doc is None or not _holds(doc, guard):
        return False
    result = await collection.update_one({"_id": doc_id}, {"$set": fields})
    return result.matched_count > 0
