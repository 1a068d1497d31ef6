"""Outbound campaigns: the campaign, its contacts (uploaded in batches, all or nothing),
each contact's dialing state, the claims of its attempts and of the dialer's leadership.

FerretDB 1.24 answers only `_id` equality in SQL and has no atomic conditional update, so
(as `storage.events` and `storage.call_index` do) everything on the dialing path is read
and claimed by `_id`, and every document has one writer:

- `campaigns`: `_id` = the campaign id; written by the API (create, pause/resume/cancel)
  and, for active -> completed only, by the dialer (`mark_completed`). Both read-check-write
  the `state` field (no atomic conditional update), so a racing pause or completion can
  overwrite a cancel: a cancel is therefore also a unique insert in `campaign_cancels`
  (`_id` = the campaign id), and every read of a campaign answers `cancelled` when that
  document exists, whatever its `state` field says (cancel wins).
- `campaign_batches`: `_id` = `<campaign>:<b>`, b = 1, 2, ...: one upload. The upload
  claims the place by a unique insert (a racing upload takes the next one), stating its
  first contact number `first_n` (the previous batch's `first_n + count`) and `count`; its
  rows go to `campaign_rows` docs `<campaign>:<b>:<k>` (k = 1.. `chunks`, <= 2000 rows each,
  `chunk_rows` saying how many, so a page reads only the chunks it shows);
  then the batch is marked `checking_at` (now), the numbers of every other batch committed
  or checking (within `_CHECKING_S`) are read, and if none is among its own the batch is
  marked `committed`; else it gives up (`ContactsRaced`, nothing added). Of two racing
  uploads holding a number, at least one sees the other (each writes its mark before it
  reads the other's), so a number is never added twice; both may give up (the client
  sends again). Only committed batches hold contacts, so an upload
  that fails or dies adds none (its numbers `n` stay unused: ids may have gaps). Batches
  may commit out of order (a later, smaller upload first): readers load contacts by the
  committed batches they have not read (`contacts_missing`), never "after the last n".
  The campaign's contact count is the sum of its committed batches' counts.
- `campaign_contacts`: `_id` = `<campaign>:<n>`: a contact's mutable state, written only by
  the campaign's dialer leader; absent means pending with no attempt yet.
- `campaign_attempts`: `_id` = `<campaign>:<n>:<attempt>`: the claim of one attempt;
  deleted by its claimant only when no call was stored for it (a refusal by the gateway
  itself), so that the attempt may be claimed again.
- `campaign_terms`: `_id` = `<campaign>:<t>`: term t of the dialer's leadership; its holder
  marks it `released` when it steps down (a draining gateway), so others take the next.
- `campaign_cancels`: `_id` = the campaign id: the campaign was cancelled (see above).

A chunk's rows are stored as one JSON text (`[[number, time zone, [key, value, ...]], ...]`):
FerretDB 1.24 stores no nested arrays, metadata keys need not be storable field names, and
one string is the cheapest thing for FerretDB to write and read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.call_index import last_taken, update_if
from storage.calls import _driver_errors, _stored_time, _utc
from storage.documents import CallDocument
from storage.errors import CampaignNotFound, CampaignStateConflict, ContactsRaced

CAMPAIGNS = "campaigns"
CAMPAIGN_BATCHES = "campaign_batches"
CAMPAIGN_ROWS = "campaign_rows"
CAMPAIGN_CONTACTS = "campaign_contacts"
CAMPAIGN_ATTEMPTS = "campaign_attempts"
CAMPAIGN_TERMS = "campaign_terms"
CAMPAIGN_CANCELS = "campaign_cancels"
CHUNK_ROWS = 2000
_CHUNK_BYTES = 4 * 1024 * 1024  # well under BSON's 16 MiB per document
_WINDOW = 16  # lookups in flight at once
_CHUNKS_PER_INSERT = 4
# An upload marked `checking` longer ago than this died before committing: ignored.
_CHECKING_S = 300.0

# The indexes `open_database` creates: the `_id` reads above serve FerretDB; these serve
# MongoDB's scans (an organisation's campaigns, the active ones, a campaign's states).
CAMPAIGN_INDEXES: dict[str, list[IndexModel]] = {
    CAMPAIGNS: [
        IndexModel([("org_id", ASCENDING), ("created_at", DESCENDING)], name="org_created"),
        IndexModel([("state", ASCENDING)], name="state"),
    ],
    CAMPAIGN_CONTACTS: [
        IndexModel([("campaign_id", ASCENDING), ("n", ASCENDING)], name="campaign_n"),
    ],
    CAMPAIGN_ATTEMPTS: [
        IndexModel([("campaign_id", ASCENDING)], name="campaign"),
    ],
}


class CampaignState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


class ContactStatus(StrEnum):
    PENDING = "pending"  # waiting for its first or next attempt
    CALLING = "calling"  # an attempt is live
    DONE = "done"  # final outcome reached
    CANCELLED = "cancelled"  # the campaign was cancelled before it was done


class Outcome(StrEnum):
    COMPLETED = "completed"
    VOICEMAIL = "voicemail"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"
    DO_NOT_CALL = "do-not-call"


CallService = Literal["twilio", "livekit"]
DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a campaign may dial: between `start_at` and `end_at` (None: open-ended), on
    `days`, between `hours` (local "HH:MM" pair) in `time_zone` (IANA) or the contact's."""

    time_zone: str
    days: tuple[str, ...] = DAYS
    hours: tuple[str, str] = ("00:00", "24:00")
    start_at: datetime | None = None
    end_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which outcomes are tried again, up to `max_attempts` attempts in all, `backoff_s`
    apart."""

    on: tuple[Outcome, ...] = ()
    max_attempts: int = 1
    backoff_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What `POST /campaigns` validated."""

    name: str
    assistant_id: str
    call_service: CallService
    schedule: Schedule
    from_number: str | None = None
    trunk_id: str | None = None
    max_concurrency: int = 1
    calls_per_second: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    id: str
    org_id: str
    name: str
    assistant_id: str
    call_service: CallService
    from_number: str | None
    trunk_id: str | None
    schedule: Schedule
    max_concurrency: int
    calls_per_second: float
    retry: RetryPolicy
    state: CampaignState
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    contact_count: int


@dataclass(frozen=True, slots=True)
class ContactInput:
    to_number: str  # E.164
    metadata: dict[str, str] = field(default_factory=dict)
    time_zone: str | None = None


@dataclass(frozen=True, slots=True)
class ContactRecord:
    campaign_id: str
    n: int
    to_number: str
    metadata: dict[str, str]
    time_zone: str | None
    status: ContactStatus = ContactStatus.PENDING
    attempts: int = 0
    next_at: datetime | None = None
    outcome: Outcome | None = None
    call_ids: tuple[str, ...] = ()
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    campaign_id: str
    n: int
    attempt: int
    gateway_id: str
    claimed_at: datetime
    call_id: str | None


@dataclass(frozen=True, slots=True)
class CampaignCounts:
    total: int
    by_status: dict[str, int]
    by_outcome: dict[str, int]


def _collection(name: str) -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[name]


async def _insert_once(collection: str, doc: dict[str, Any]) -> bool:
    """Insert `doc` unless its `_id` is taken (FerretDB's one atomic check-and-set): True
    for the one writer whose insert it was."""
    try:
        await _collection(collection).insert_one(doc)
    except DuplicateKeyError:
        return False
    return True


def _time(value: Any) -> datetime | None:
    return _utc(value) if isinstance(value, datetime) else None


def _schedule_doc(schedule: Schedule) -> dict[str, Any]:
    return {
        "time_zone": schedule.time_zone,
        "days": list(schedule.days),
        "hours": list(schedule.hours),
        "start_at": _stored_time(schedule.start_at) if schedule.start_at else None,
        "end_at": _stored_time(schedule.end_at) if schedule.end_at else None,
    }


def _campaign(raw: dict[str, Any], contact_count: int) -> CampaignRecord:
    sched = raw["schedule"]
    retry = raw["retry"]
    created = _time(raw["created_at"])
    updated = _time(raw["updated_at"])
    assert created is not None and updated is not None
    hours = list(sched["hours"])
    return CampaignRecord(
        id=str(raw["_id"]),
        org_id=str(raw["org_id"]),
        name=str(raw["name"]),
        assistant_id=str(raw["assistant_id"]),
        call_service="livekit" if raw["call_service"] == "livekit" else "twilio",
        from_number=raw.get("from_number"),
        trunk_id=raw.get("trunk_id"),
        schedule=Schedule(
            time_zone=str(sched["time_zone"]),
            days=tuple(sched["days"]),
            hours=(str(hours[0]), str(hours[1])),
            start_at=_time(sched.get("start_at")),
            end_at=_time(sched.get("end_at")),
        ),
        max_concurrency=int(raw["max_concurrency"]),
        calls_per_second=float(raw["calls_per_second"]),
        retry=RetryPolicy(
            on=tuple(Outcome(o) for o in retry["on"]),
            max_attempts=int(retry["max_attempts"]),
            backoff_s=float(retry["backoff_s"]),
        ),
        state=CampaignState(raw["state"]),
        created_at=created,
        updated_at=updated,
        completed_at=_time(raw.get("completed_at")),
        contact_count=contact_count,
    )


def _row(contact: ContactInput) -> list[Any]:
    flat: list[str] = []
    for key, value in contact.metadata.items():
        flat += [key, value]
    return [contact.to_number, contact.time_zone, flat]


def _row_size(row: list[Any]) -> int:
    return 32 + len(row[0]) + len(row[1] or "") + sum(len(s) + 8 for s in row[2])


def _chunks(rows: list[list[Any]]) -> list[list[list[Any]]]:
    """Rows cut into chunk docs' contents: <= `CHUNK_ROWS` rows and ~`_CHUNK_BYTES` each."""
    out: list[list[list[Any]]] = []
    current: list[list[Any]] = []
    size = 0
    for row in rows:
        row_size = _row_size(row)
        if current and (len(current) >= CHUNK_ROWS or size + row_size > _CHUNK_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(row)
        size += row_size
    if current:
        out.append(current)
    return out


@dataclass(frozen=True, slots=True)
class _Batch:
    b: int
    first_n: int
    count: int
    chunk_rows: tuple[int, ...]  # rows in chunk 1, 2, ...

    def chunk_places(self) -> list[tuple[int, int, int]]:
        """(k, first n, rows) of every chunk."""
        out, n = [], self.first_n
        for k, rows in enumerate(self.chunk_rows, start=1):
            out.append((k, n, rows))
            n += rows
        return out

    def chunks_after(self, after_n: int) -> list[tuple[int, int]]:
        """(k, first n) of the chunks holding contacts past `after_n`."""
        out, n = [], self.first_n
        for k, rows in enumerate(self.chunk_rows, start=1):
            if n + rows - 1 > after_n:
                out.append((k, n))
            n += rows
        return out


@dataclass(frozen=True, slots=True)
class _Data:
    n: int
    to_number: str
    time_zone: str | None
    metadata: dict[str, str]


def _state_fields(raw: dict[str, Any] | None) -> dict[str, Any]:
    if raw is None:
        return {}
    outcome = raw.get("outcome")
    return {
        "status": ContactStatus(raw["status"]),
        "attempts": int(raw.get("attempts", 0)),
        "next_at": _time(raw.get("next_at")),
        "outcome": Outcome(outcome) if outcome else None,
        "call_ids": tuple(str(c) for c in raw.get("call_ids", ())),
        "updated_at": _time(raw.get("updated_at")),
    }


def _contact(campaign_id: str, data: _Data, state: dict[str, Any] | None) -> ContactRecord:
    return ContactRecord(
        campaign_id=campaign_id,
        n=data.n,
        to_number=data.to_number,
        metadata=data.metadata,
        time_zone=data.time_zone,
        **_state_fields(state),
    )


# Which states each request may move a campaign from (the target itself: nothing to do).
_MOVES: dict[CampaignState, tuple[CampaignState, ...]] = {
    CampaignState.PAUSED: (CampaignState.ACTIVE,),
    CampaignState.ACTIVE: (CampaignState.PAUSED,),
    CampaignState.CANCELLED: (CampaignState.ACTIVE, CampaignState.PAUSED),
}


class CampaignRepository:
    """Campaigns, their contacts and the dialer's claims (see the module's docstring), with
    this process's hints of where each campaign's batches end (places are only added)."""

    def __init__(self) -> None:
        self._batch_heads: dict[str, int] = {}

    # -- the API's side

    @_driver_errors
    async def create(
        self, org_id: str, spec: CampaignSpec, *, at: datetime | None = None
    ) -> CampaignRecord:
        now = _stored_time(at or datetime.now(UTC))
        raw: dict[str, Any] = {
            "_id": str(ObjectId()),
            "org_id": org_id,
            "name": spec.name,
            "assistant_id": spec.assistant_id,
            "call_service": spec.call_service,
            "from_number": spec.from_number,
            "trunk_id": spec.trunk_id,
            "schedule": _schedule_doc(spec.schedule),
            "max_concurrency": spec.max_concurrency,
            "calls_per_second": spec.calls_per_second,
            "retry": {
                "on": [o.value for o in spec.retry.on],
                "max_attempts": spec.retry.max_attempts,
                "backoff_s": spec.retry.backoff_s,
            },
            "state": CampaignState.ACTIVE.value,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
        }
        await _collection(CAMPAIGNS).insert_one(raw)
        return _campaign(raw, 0)

    async def _raw(self, org_id: str, campaign_id: str) -> dict[str, Any]:
        raw = await _collection(CAMPAIGNS).find_one({"_id": campaign_id})
        if raw is None or raw.get("org_id") != org_id:
            raise CampaignNotFound(f"no campaign {campaign_id!r}")
        return raw

    async def _cancelled(self, campaign_id: str) -> bool:
        found = await _collection(CAMPAIGN_CANCELS).find_one({"_id": campaign_id}, {"_id": 1})
        return found is not None

    async def _record(self, raw: dict[str, Any]) -> CampaignRecord:
        """The campaign with its contact count; `cancelled` if a cancel is stored (it wins
        over whatever a racing writer left in `state`)."""
        campaign_id = str(raw["_id"])
        count, cancelled = await asyncio.gather(
            self._contact_count(campaign_id), self._cancelled(campaign_id)
        )
        if cancelled and raw.get("state") != CampaignState.CANCELLED.value:
            raw = {**raw, "state": CampaignState.CANCELLED.value}
        return _campaign(raw, count)

    @_driver_errors
    async def get(self, org_id: str, campaign_id: str) -> CampaignRecord:
        """The organisation's campaign; `CampaignNotFound` (also for another's)."""
        return await self._record(await self._raw(org_id, campaign_id))

    @_driver_errors
    async def set_state(
        self, org_id: str, campaign_id: str, state: CampaignState, *, at: datetime | None = None
    ) -> CampaignRecord:
        """Pause, resume or cancel (idempotent: the state it is in already is no change).
        `CampaignStateConflict` for a move the state forbids (pause/resume of a cancelled or
        completed campaign, cancel of a completed one)."""
        if state not in _MOVES:
            raise ValueError(f"the API does not set a campaign {state.value}")
        for _ in range(5):
            record = await self._record(await self._raw(org_id, campaign_id))
            current = record.state
            if current == state:
                return record
            if current not in _MOVES[state]:
                raise CampaignStateConflict(
                    f"campaign {campaign_id!r} is {current.value}: it cannot be {state.value}"
                )
            now = _stored_time(at or datetime.now(UTC))
            if state == CampaignState.CANCELLED:
                # The unique insert is the cancel; the state field follows (best effort:
                # a racing pause or completion may overwrite it, the insert still wins).
                with contextlib.suppress(DuplicateKeyError):
                    await _collection(CAMPAIGN_CANCELS).insert_one({"_id": campaign_id, "at": now})
            if await update_if(
                _collection(CAMPAIGNS),
                campaign_id,
                {"state": current.value},
                {"state": state.value, "updated_at": now},
            ):
                return await self.get(org_id, campaign_id)
        raise CampaignStateConflict(f"campaign {campaign_id!r} is changing: try again")

    # batches

    async def _batch_raw(self, campaign_id: str, b: int) -> dict[str, Any] | None:
        return await _collection(CAMPAIGN_BATCHES).find_one({"_id": f"{campaign_id}:{b}"})

    async def _batch_head(self, campaign_id: str) -> int:
        async def taken(b: int) -> bool:
            found = await _collection(CAMPAIGN_BATCHES).find_one(
                {"_id": f"{campaign_id}:{b}"}, {"_id": 1}
            )
            return found is not None

        known = self._batch_heads.get(campaign_id, 0)
        head = await last_taken(taken, known, 1)
        self._batch_heads[campaign_id] = max(head, known)
        return head

    async def _batches(self, campaign_id: str) -> list[_Batch]:
        """The campaign's committed batches, in order."""
        head = await self._batch_head(campaign_id)
        out: list[_Batch] = []
        for start in range(1, head + 1, _WINDOW):
            got = await asyncio.gather(
                *(
                    self._batch_raw(campaign_id, b)
                    for b in range(start, min(start + _WINDOW, head + 1))
                )
            )
            for raw in got:
                if raw is not None and raw.get("committed"):
                    out.append(
                        _Batch(
                            b=int(raw["b"]),
                            first_n=int(raw["first_n"]),
                            count=int(raw["count"]),
                            chunk_rows=tuple(int(r) for r in raw["chunk_rows"]),
                        )
                    )
        return out

    async def _contact_count(self, campaign_id: str) -> int:
        return sum(b.count for b in await self._batches(campaign_id))

    async def _chunk(self, campaign_id: str, b: int, k: int, first_n: int) -> list[_Data]:
        raw = await _collection(CAMPAIGN_ROWS).find_one({"_id": f"{campaign_id}:{b}:{k}"})
        if raw is None:  # a committed batch has all its chunks: written before the mark
            return []
        out: list[_Data] = []
        for n, (number, zone, flat) in enumerate(json.loads(raw["rows"]), start=first_n):
            meta = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
            out.append(_Data(n=n, to_number=str(number), time_zone=zone, metadata=meta))
        return out

    async def _data_chunks(
        self, campaign_id: str, after_n: int = 0, *, window: int = 64
    ) -> AsyncIterator[list[_Data]]:
        """The contacts' data past `after_n`, chunk by chunk in n order, `window` chunks
        read at once (a page reads only the chunks it needs)."""
        places = [
            (batch.b, k, first_n)
            for batch in await self._batches(campaign_id)
            for k, first_n in batch.chunks_after(after_n)
        ]
        for start in range(0, len(places), window):
            part = places[start : start + window]
            chunks = await asyncio.gather(*(self._chunk(campaign_id, *p) for p in part))
            for chunk in chunks:
                yield [d for d in chunk if d.n > after_n]

    async def _data(self, campaign_id: str) -> list[_Data]:
        """Every contact's data, in n order."""
        return [d async for chunk in self._data_chunks(campaign_id) for d in chunk]

    async def _states(self, campaign_id: str) -> dict[int, dict[str, Any]]:
        """Every stored contact state of the campaign (one query: a scan on FerretDB)."""
        raws = await _collection(CAMPAIGN_CONTACTS).find({"campaign_id": campaign_id}).to_list(None)
        return {int(r["n"]): r for r in raws}

    @_driver_errors
    async def existing_numbers(self, campaign_id: str) -> set[str]:
        """The numbers of the campaign's committed contacts."""
        return {d.to_number for d in await self._data(campaign_id)}

    @_driver_errors
    async def add_contacts(
        self, campaign_id: str, rows: Sequence[ContactInput], *, at: datetime | None = None
    ) -> int:
        """Add `rows` (validated by the caller) as one batch, all or nothing: they count
        only once the batch is marked committed, its rows written. Returns how many."""
        if not rows:
            return 0
        stored = [_row(r) for r in rows]
        chunks = _chunks(stored)
        now = _stored_time(at or datetime.now(UTC))
        b = await self._batch_head(campaign_id) + 1
        while True:
            before = await self._batch_raw(campaign_id, b - 1) if b > 1 else None
            first_n = int(before["first_n"]) + int(before["count"]) if before else 1
            try:
                await _collection(CAMPAIGN_BATCHES).insert_one(
                    {
                        "_id": f"{campaign_id}:{b}",
                        "campaign_id": campaign_id,
                        "b": b,
                        "first_n": first_n,
                        "count": len(stored),
                        "chunks": len(chunks),
                        "chunk_rows": [len(chunk) for chunk in chunks],
                        "committed": False,
                        "created_at": now,
                    }
                )
            except DuplicateKeyError:
                b = await self._batch_head(campaign_id) + 1
                continue
            break
        self._batch_heads[campaign_id] = max(b, self._batch_heads.get(campaign_id, 0))
        try:
            # A few chunks per insert: the event loop (live calls' audio) is never held
            # for the encoding of the whole upload.
            for first in range(0, len(chunks), _CHUNKS_PER_INSERT):
                await _collection(CAMPAIGN_ROWS).insert_many(
                    [
                        {
                            "_id": f"{campaign_id}:{b}:{k}",
                            "campaign_id": campaign_id,
                            "rows": json.dumps(chunk, separators=(",", ":")),
                        }
                        for k, chunk in enumerate(
                            chunks[first : first + _CHUNKS_PER_INSERT], start=first + 1
                        )
                    ],
                    ordered=False,
                )
            await _collection(CAMPAIGN_BATCHES).update_one(
                {"_id": f"{campaign_id}:{b}"}, {"$set": {"checking_at": datetime.now(UTC)}}
            )
            raced = await self._raced(campaign_id, b, {row[0] for row in stored})
            if raced:
                raise ContactsRaced(sorted(raced))
            await _collection(CAMPAIGN_BATCHES).update_one(
                {"_id": f"{campaign_id}:{b}"}, {"$set": {"committed": True}}
            )
        except BaseException as exc:
            # Uncommitted, the batch adds nothing and its rows are dropped if we can; but the
            # commit may have landed though its reply was lost: then the rows are kept.
            committed = await asyncio.shield(self._drop_rows(campaign_id, b, len(chunks)))
            if committed and isinstance(exc, Exception):
                return len(stored)
            raise
        return len(stored)

    async def _raced(self, campaign_id: str, b: int, numbers: set[str]) -> set[str]:
        """`numbers` that another batch, committed or being checked (not for longer than
        `_CHECKING_S`), also holds."""
        head = await self._batch_head(campaign_id)
        others = [x for x in range(1, head + 1) if x != b]
        fresh = datetime.now(UTC) - timedelta(seconds=_CHECKING_S)
        places: list[tuple[int, int, int]] = []
        for start in range(0, len(others), _WINDOW):
            raws = await asyncio.gather(
                *(self._batch_raw(campaign_id, x) for x in others[start : start + _WINDOW])
            )
            for raw in raws:
                if raw is None:
                    continue
                checking = _time(raw.get("checking_at"))
                if not raw.get("committed") and (checking is None or checking < fresh):
                    continue
                batch = _Batch(
                    b=int(raw["b"]),
                    first_n=int(raw["first_n"]),
                    count=int(raw["count"]),
                    chunk_rows=tuple(int(r) for r in raw.get("chunk_rows", ())),
                )
                places += [(batch.b, k, first_n) for k, first_n, _ in batch.chunk_places()]
        found: set[str] = set()
        for start in range(0, len(places), 64):
            chunks = await asyncio.gather(
                *(self._chunk(campaign_id, *p) for p in places[start : start + 64])
            )
            found |= {d.to_number for chunk in chunks for d in chunk if d.to_number in numbers}
        return found

    async def _drop_rows(self, campaign_id: str, b: int, chunks: int) -> bool:
        """Drop an abandoned batch's rows unless it is committed (True then) or unknown."""
        try:
            raw = await self._batch_raw(campaign_id, b)
            if raw is None or raw.get("committed") is not False:
                return raw is not None and bool(raw.get("committed"))
            await _collection(CAMPAIGN_BATCHES).update_one(
                {"_id": f"{campaign_id}:{b}"}, {"$set": {"checking_at": None}}
            )
            for k in range(1, chunks + 1):
                await _collection(CAMPAIGN_ROWS).delete_one({"_id": f"{campaign_id}:{b}:{k}"})
        except Exception:  # noqa: BLE001 - not known uncommitted: its rows are kept
            return False
        return False

    @_driver_errors
    async def contacts(
        self,
        campaign_id: str,
        *,
        status: ContactStatus | None = None,
        after_n: int = 0,
        limit: int = 100,
    ) -> list[ContactRecord]:
        """Contacts past `after_n` (n ascending; the cursor is the last n), of `status` if
        given. Without a status the page's states are read by `_id`; with one, all the
        campaign's states in one query."""
        if status is None:
            page: list[_Data] = []
            async for chunk in self._data_chunks(campaign_id, after_n, window=1):
                page.extend(chunk[: limit - len(page)])
                if len(page) == limit:
                    break
            states = await self._states_of(campaign_id, [d.n for d in page])
            return [_contact(campaign_id, d, states.get(d.n)) for d in page]
        all_states = await self._states(campaign_id)
        out: list[ContactRecord] = []
        async for chunk in self._data_chunks(campaign_id, after_n, window=4):
            for d in chunk:
                contact = _contact(campaign_id, d, all_states.get(d.n))
                if contact.status == status:
                    out.append(contact)
                    if len(out) == limit:
                        return out
        return out

    async def _states_of(self, campaign_id: str, ns: Iterable[int]) -> dict[int, dict[str, Any]]:
        wanted = list(ns)
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 64):
            part = wanted[start : start + 64]
            got = await asyncio.gather(
                *(
                    _collection(CAMPAIGN_CONTACTS).find_one({"_id": f"{campaign_id}:{n}"})
                    for n in part
                )
            )
            out.update({n: raw for n, raw in zip(part, got, strict=True) if raw is not None})
        return out

    @_driver_errors
    async def counts(self, campaign_id: str) -> CampaignCounts:
        """How many contacts, by status and by outcome (of their last finished attempt)."""
        total, states = await asyncio.gather(
            self._contact_count(campaign_id), self._states(campaign_id)
        )
        by_status: dict[str, int] = dict.fromkeys((s.value for s in ContactStatus), 0)
        by_outcome: dict[str, int] = {}
        for raw in states.values():
            by_status[str(raw["status"])] = by_status.get(str(raw["status"]), 0) + 1
            if raw.get("outcome"):
                by_outcome[str(raw["outcome"])] = by_outcome.get(str(raw["outcome"]), 0) + 1
        stored = sum(v for k, v in by_status.items() if k != ContactStatus.PENDING.value)
        by_status[ContactStatus.PENDING.value] = max(0, total - stored)
        return CampaignCounts(total=total, by_status=by_status, by_outcome=by_outcome)

    # -- the dialer's side

    @_driver_errors
    async def active(self) -> list[CampaignRecord]:
        """Every organisation's active campaigns."""
        raws = (
            await _collection(CAMPAIGNS).find({"state": CampaignState.ACTIVE.value}).to_list(None)
        )
        records = await asyncio.gather(*(self._record(r) for r in raws))
        return [r for r in records if r.state == CampaignState.ACTIVE]

    @_driver_errors
    async def get_any(self, campaign_id: str) -> CampaignRecord | None:
        raw = await _collection(CAMPAIGNS).find_one({"_id": campaign_id})
        if raw is None:
            return None
        return await self._record(raw)

    @_driver_errors
    async def all_contacts(self, campaign_id: str) -> list[ContactRecord]:
        """Every committed contact with its state, n ascending."""
        data, states = await asyncio.gather(self._data(campaign_id), self._states(campaign_id))
        return [_contact(campaign_id, d, states.get(d.n)) for d in data]

    @_driver_errors
    async def contacts_missing(
        self, campaign_id: str, have: Collection[int]
    ) -> list[ContactRecord]:
        """The committed contacts whose n is not in `have`, with their states, n ascending:
        the chunks of every committed batch holding such a contact are read (batches may
        commit out of order, so "after the last n" would skip an earlier, slower upload)."""
        places = [
            (batch.b, k, first_n)
            for batch in await self._batches(campaign_id)
            for k, first_n, rows in batch.chunk_places()
            if any(n not in have for n in range(first_n, first_n + rows))
        ]
        data: list[_Data] = []
        for start in range(0, len(places), 64):
            chunks = await asyncio.gather(
                *(self._chunk(campaign_id, *p) for p in places[start : start + 64])
            )
            data += [d for chunk in chunks for d in chunk if d.n not in have]
        data.sort(key=lambda d: d.n)
        states = await self._states_of(campaign_id, [d.n for d in data])
        return [_contact(campaign_id, d, states.get(d.n)) for d in data]

    @_driver_errors
    async def save_contact(self, contact: ContactRecord) -> None:
        """Store a contact's state (by `_id`; the campaign's dialer leader is its one writer)."""
        state_id = f"{contact.campaign_id}:{contact.n}"
        await _collection(CAMPAIGN_CONTACTS).replace_one(
            {"_id": state_id},
            {
                "_id": state_id,
                "campaign_id": contact.campaign_id,
                "n": contact.n,
                "status": contact.status.value,
                "attempts": contact.attempts,
                "next_at": _stored_time(contact.next_at) if contact.next_at else None,
                "outcome": contact.outcome.value if contact.outcome else None,
                "call_ids": list(contact.call_ids),
                "updated_at": _stored_time(contact.updated_at or datetime.now(UTC)),
            },
            upsert=True,
        )

    @_driver_errors
    async def current_term(self, campaign_id: str) -> tuple[int, str | None]:
        """The latest term of the campaign's dialer leadership and its gateway (0, None: none;
        gateway None also when its holder released it)."""

        async def taken(t: int) -> bool:
            found = await _collection(CAMPAIGN_TERMS).find_one(
                {"_id": f"{campaign_id}:{t}"}, {"_id": 1}
            )
            return found is not None

        term = await last_taken(taken, 0, 1)
        if term == 0:
            return 0, None
        raw = await _collection(CAMPAIGN_TERMS).find_one({"_id": f"{campaign_id}:{term}"})
        if raw is None or raw.get("released"):
            return term, None
        return term, str(raw["gateway_id"])

    @_driver_errors
    async def release_term(self, campaign_id: str, term: int) -> None:
        """The holder of `term` steps down (its one writer): others may claim the next."""
        await _collection(CAMPAIGN_TERMS).update_one(
            {"_id": f"{campaign_id}:{term}"}, {"$set": {"released": True}}
        )

    @_driver_errors
    async def claim_term(
        self, campaign_id: str, term: int, *, gateway_id: str, at: datetime
    ) -> bool:
        """Take term `term` (a unique insert): True for the one gateway that gets it."""
        return await _insert_once(
            CAMPAIGN_TERMS,
            {
                "_id": f"{campaign_id}:{term}",
                "campaign_id": campaign_id,
                "term": term,
                "gateway_id": gateway_id,
                "at": _stored_time(at),
            },
        )

    @_driver_errors
    async def claim_attempt(
        self, campaign_id: str, n: int, attempt: int, *, gateway_id: str, at: datetime
    ) -> bool:
        """Take attempt `attempt` of contact `n` (a unique insert): True for exactly one."""
        return await _insert_once(
            CAMPAIGN_ATTEMPTS,
            {
                "_id": f"{campaign_id}:{n}:{attempt}",
                "campaign_id": campaign_id,
                "n": n,
                "attempt": attempt,
                "gateway_id": gateway_id,
                "claimed_at": _stored_time(at),
                "call_id": None,
            },
        )

    @_driver_errors
    async def set_attempt_call(self, campaign_id: str, n: int, attempt: int, call_id: str) -> None:
        """The attempt's call is stored as `call_id` (written by the attempt's claimant)."""
        await _collection(CAMPAIGN_ATTEMPTS).update_one(
            {"_id": f"{campaign_id}:{n}:{attempt}"}, {"$set": {"call_id": call_id}}
        )

    @_driver_errors
    async def release_attempt(self, campaign_id: str, n: int, attempt: int) -> None:
        """The claimant gives its attempt back: no call was stored for it (refused by its
        own gateway), so it may be claimed again."""
        await _collection(CAMPAIGN_ATTEMPTS).delete_one({"_id": f"{campaign_id}:{n}:{attempt}"})

    @_driver_errors
    async def attempt(self, campaign_id: str, n: int, attempt: int) -> AttemptRecord | None:
        raw = await _collection(CAMPAIGN_ATTEMPTS).find_one({"_id": f"{campaign_id}:{n}:{attempt}"})
        if raw is None:
            return None
        claimed = _time(raw["claimed_at"])
        assert claimed is not None
        call_id = raw.get("call_id")
        return AttemptRecord(
            campaign_id=campaign_id,
            n=n,
            attempt=attempt,
            gateway_id=str(raw["gateway_id"]),
            claimed_at=claimed,
            call_id=str(call_id) if call_id else None,
        )

    @_driver_errors
    async def mark_completed(self, campaign_id: str, *, at: datetime) -> None:
        """active -> completed (nothing if it is paused, cancelled or completed by now; a
        cancel racing this still wins: see `_record`)."""
        now = _stored_time(at)
        if await self._cancelled(campaign_id):
            return
        await update_if(
            _collection(CAMPAIGNS),
            campaign_id,
            {"state": CampaignState.ACTIVE.value},
            {"state": CampaignState.COMPLETED.value, "completed_at": now, "updated_at": now},
        )

    # -- last, so that `list` in the annotations above is the builtin

    @_driver_errors
    async def list(self, org_id: str) -> list[CampaignRecord]:
        """The organisation's campaigns, newest first (a scan on FerretDB: campaigns are few)."""
        raws = await _collection(CAMPAIGNS).find({"org_id": org_id}).to_list(None)
        raws.sort(key=lambda r: (_time(r["created_at"]), str(r["_id"])), reverse=True)
        return list(await asyncio.gather(*(self._record(r) for r in raws)))
