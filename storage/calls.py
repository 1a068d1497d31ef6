"""Calls and their transcript turns: the typed API the gateway uses, over beanie documents.

Every method is one or two small queries, and a turn is one insert when it is said, so a
crash loses nothing already spoken. Driver errors become `StorageError` here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import math
import weakref
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar

from beanie import PydanticObjectId, SortDirection
from bson.errors import InvalidId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DocumentTooLarge, DuplicateKeyError, PyMongoError

from storage.call_index import (
    OPEN_CALLS,
    OWED_ANALYSES,
    OWED_REPORTS,
    CallIndex,
    millis,
    update_if,
)
from storage.documents import CallDocument, TurnDocument
from storage.errors import CallNotFound, InvalidCursor, NotFound, RecordTooLarge, StorageError
from storage.live_calls import LiveCallCount, LiveCallRows
from storage.models import (
    CallAnalysis,
    CallCost,
    CallFilter,
    CallPage,
    CallRecord,
    CallStatus,
    CallUsage,
    Direction,
    NewCall,
    RecordingState,
    Speaker,
    TurnRecord,
)
from storage.redaction import redact_credentials

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _driver_errors(
    func: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map driver exceptions to `StorageError` at this boundary."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except DocumentTooLarge as exc:  # a BSON error, not a PyMongoError: the driver refused
            raise RecordTooLarge(f"record too large to store: {exc}") from exc
        except PyMongoError as exc:
            raise StorageError(f"database error: {redact_credentials(str(exc))}") from exc

    return wrapper


class CallStore(Protocol):
    """What the session and the routes need from call storage."""

    async def create_call(self, call: NewCall, *, started_at: datetime) -> CallRecord: ...
    async def set_status(
        self, call_id: str, status: CallStatus, *, answered_at: datetime | None = None
    ) -> bool: ...
    async def set_stream(self, call_id: str, stream_sid: str) -> None: ...
    async def set_call_sid(self, call_id: str, call_sid: str) -> None: ...
    async def set_answered_by(self, call_id: str, answered_by: str) -> None: ...
    async def set_recording(self, call_id: str, state: RecordingState) -> None: ...
    async def get_call_by_egress(self, egress_id: str) -> CallRecord | None: ...
    async def set_served_by(self, call_id: str, gateway_id: str) -> None: ...
    async def served_calls(self) -> list[CallRecord]: ...
    async def add_turn(
        self,
        call_id: str,
        *,
        speaker: Speaker,
        text: str,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
        latency: Mapping[str, float] | None = None,
        turn_id: str | None = None,
        first_attempt: bool = False,
    ) -> TurnRecord: ...
    async def update_turn(
        self, turn_id: str, *, text: str, end_ms: float, interrupted: bool
    ) -> None: ...
    async def finish_call(
        self,
        call_id: str,
        *,
        status: CallStatus,
        end_reason: str,
        ended_at: datetime,
        usage: CallUsage | None = None,
        cost: CallCost | None = None,
        with_turns: bool = False,
    ) -> CallRecord: ...
    async def record_carrier_end(
        self, call_id: str, *, status: CallStatus, reason: str, at: datetime
    ) -> None: ...
    async def carrier_end(self, call_id: str) -> tuple[CallStatus, str] | None: ...
    async def record_carrier_answer(
        self, call_id: str, answered_by: str, *, at: datetime
    ) -> None: ...
    async def carrier_answer(self, call_id: str) -> str | None: ...
    async def get_call(self, call_id: str, *, with_turns: bool = True) -> CallRecord: ...
    async def get_call_by_sid(self, call_sid: str) -> CallRecord | None: ...
    async def list_calls(
        self, where: CallFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> CallPage: ...


# FerretDB 1.24 applies an update by reading the document and writing it back whole, so two
# concurrent updates of one call (a lease renewal and the finish, the recorder's state and
# the stream's ids) could undo each other. Every write of a call document in this process
# goes through the call's lock; the locks go away with their last user.
_call_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def call_write_lock(call_id: str) -> asyncio.Lock:
    """The lock that serialises this process's writes of one call's document."""
    lock = _call_locks.get(call_id)
    if lock is None:
        lock = _call_locks[call_id] = asyncio.Lock()
    return lock


# What the carrier said about a call another gateway serves, kept beside the call (one
# insert each, keyed by the call id) until the call is finished, and never past
# `CARRIER_NOTE_KEEP` (an expired note is pruned with the claims: `storage.claims`).
CARRIER_ENDS = "carrier_ends"
CARRIER_ANSWERS = "carrier_answers"
CARRIER_NOTE_KEEP = timedelta(days=1)
CARRIER_NOTE_INDEXES: dict[str, list[IndexModel]] = {
    name: [IndexModel([("expires_at", ASCENDING)], name="expires_at")]
    for name in (CARRIER_ENDS, CARRIER_ANSWERS)
}


def _carrier_notes(name: str) -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[name]


def _carrier_ends() -> AsyncCollection[dict[str, Any]]:
    return _carrier_notes(CARRIER_ENDS)


# What a call's analysis is from the moment it is owed until a gateway has run it.
ANALYSIS_PENDING: dict[str, Any] = {"status": "pending"}


def new_turn_id() -> str:
    """An id for a turn not stored yet: a write retried with it is stored once."""
    return str(PydanticObjectId())


def _object_id(value: str, *, what: str) -> PydanticObjectId:
    """The ObjectId `value` names; a malformed id is simply a record that does not exist."""
    try:
        return PydanticObjectId(value)
    except (InvalidId, TypeError) as exc:
        if what == "call":
            raise CallNotFound(f"no call {value!r}") from exc
        raise NotFound(f"no {what} {value!r}") from exc


def _stored_time(value: datetime) -> datetime:
    """UTC at BSON's millisecond precision, so what a write returns equals what reads return."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: storage takes timezone-aware times")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _utc(value: datetime | None) -> datetime | None:
    # The client is tz_aware; this only guards documents built in memory.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _turn_record(doc: TurnDocument) -> TurnRecord:
    speaker: Speaker = "agent" if doc.speaker == "agent" else "caller"
    created = _utc(doc.created_at)
    assert created is not None
    return TurnRecord(
        id=str(doc.id),
        call_id=doc.call_id,
        index=doc.index,
        speaker=speaker,
        text=doc.text,
        start_ms=doc.start_ms,
        end_ms=doc.end_ms,
        interrupted=doc.interrupted,
        created_at=created,
        latency=doc.latency,
    )


def _analysis(raw: dict[str, Any]) -> CallAnalysis:
    """A stored analysis: its structured data is kept as JSON text, so that whatever keys
    the model chose (`$`, dots) never meet the store's rules for field names."""
    fields = dict(raw)
    data_json = fields.pop("data_json", None)
    if isinstance(data_json, str):
        fields["data"] = json.loads(data_json)
    return CallAnalysis.model_validate(fields)


def _call_record(doc: CallDocument, turns: tuple[TurnRecord, ...] = ()) -> CallRecord:
    started = _utc(doc.started_at)
    assert started is not None
    return CallRecord(
        id=str(doc.id),
        org_id=doc.org_id,
        transport=doc.transport,
        call_sid=doc.call_sid,
        stream_sid=doc.stream_sid,
        from_number=doc.from_number,
        to_number=doc.to_number,
        direction=Direction(doc.direction),
        assistant_id=doc.assistant_id,
        metadata=dict(doc.metadata),
        status=CallStatus(doc.status),
        started_at=started,
        ended_at=_utc(doc.ended_at),
        duration_s=doc.duration_s,
        end_reason=doc.end_reason,
        turns=turns,
        latency_p50=doc.latency_p50,
        latency_p95=doc.latency_p95,
        usage=CallUsage.model_validate(doc.usage) if doc.usage else None,
        cost=CallCost.model_validate(doc.cost) if doc.cost else None,
        system_prompt=doc.system_prompt,
        greeting=doc.greeting,
        answered_by=doc.answered_by,
        answered_at=_utc(doc.answered_at),
        recording=RecordingState.model_validate(doc.recording) if doc.recording else None,
        served_by=doc.served_by,
        analysis=_analysis(doc.analysis) if doc.analysis else None,
    )


# Progress only moves forward: a late "ringing" never overwrites "in-progress".
_EARLIER = {
    CallStatus.QUEUED: [],
    CallStatus.RINGING: [CallStatus.QUEUED.value],
    CallStatus.IN_PROGRESS: [CallStatus.QUEUED.value, CallStatus.RINGING.value],
}


def _encode_cursor(doc: CallDocument) -> str:
    started = _utc(doc.started_at)
    assert started is not None
    raw = json.dumps([started.isoformat(), str(doc.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, PydanticObjectId]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, oid = json.loads(raw)
        return datetime.fromisoformat(started), PydanticObjectId(oid)
    except (binascii.Error, ValueError, TypeError, InvalidId, RecursionError) as exc:
        raise InvalidCursor("invalid cursor") from exc


def _call_query(where: CallFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if where.org_id is not None:
        query["org_id"] = where.org_id
    if where.assistant_id is not None:
        query["assistant_id"] = where.assistant_id
    if where.status is not None:
        query["status"] = where.status.value
    if where.direction is not None:
        query["direction"] = where.direction.value
    started: dict[str, datetime] = {}
    if where.started_after is not None:
        started["$gte"] = _stored_time(where.started_after)
    if where.started_before is not None:
        started["$lt"] = _stored_time(where.started_before)
    if started:
        query["started_at"] = started
    return query


def _latency_percentiles(
    per_turn: list[dict[str, float]],
) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """p50 and p95 (nearest rank) of every latency stage over a call's agent turns."""
    if not per_turn:
        return None, None
    stages = sorted({stage for turn in per_turn for stage in turn})
    p50: dict[str, float] = {}
    p95: dict[str, float] = {}
    for stage in stages:
        values = sorted(turn[stage] for turn in per_turn if stage in turn)
        p50[stage] = values[max(0, math.ceil(0.50 * len(values)) - 1)]
        p95[stage] = values[max(0, math.ceil(0.95 * len(values)) - 1)]
    return p50, p95


class CallRepository:
    """`CallStore` on MongoDB (through beanie); initialise beanie first (`open_database`).

    Turn positions come from a per-call counter kept here, seeded from the stored turns the
    first time a call is written by this process; the unique (call_id, index) index makes a
    second writer re-seed instead of overwriting.
    """

    def __init__(self) -> None:
        self._next_index: dict[str, int] = {}
        self._keys = CallIndex()
        self._live = LiveCallRows()

    @_driver_errors
    async def create_call(self, call: NewCall, *, started_at: datetime) -> CallRecord:
        """Store a new call, keyed first (`storage.call_index`): a key whose call was never
        stored is passed over by readers, a call never keyed would be missing from them."""
        oid = PydanticObjectId()
        started = _stored_time(started_at)
        index_key = await self._keys.add_call(
            org_id=call.org_id,
            call_id=str(oid),
            started_at=started,
            assistant_id=call.assistant_id,
            direction=call.direction.value,
        )
        if call.call_sid:
            await self._keys.note_sid(call.call_sid, str(oid), started)
        # Counted live from before it is stored (`storage.live_calls`) until it is finished.
        await self._live.add(
            str(oid), org_id=call.org_id, direction=call.direction.value, at=started
        )
        doc = CallDocument(
            id=oid,
            org_id=call.org_id,
            transport=call.transport,
            call_sid=call.call_sid,
            stream_sid=call.stream_sid,
            from_number=call.from_number,
            to_number=call.to_number,
            direction=call.direction.value,
            assistant_id=call.assistant_id,
            metadata=dict(call.metadata),
            status=call.status.value,
            started_at=started,
            system_prompt=call.system_prompt,
            greeting=call.greeting,
            index_key=index_key,
        )
        await doc.insert()
        return _call_record(doc)

    @_driver_errors
    async def set_status(
        self, call_id: str, status: CallStatus, *, answered_at: datetime | None = None
    ) -> bool:
        """Record a progress status; it only moves forward, and a finished call keeps its own
        (True: the status changed, False: it was there already or past it). `answered_at`
        (the gateway answered the call then) is stored either way: a carrier's callback may
        have moved the status first."""
        earlier = _EARLIER.get(status)
        if earlier is None:
            raise ValueError(f"{status} is final: use finish_call")
        oid = _object_id(call_id, what="call")
        calls = CallDocument.get_pymongo_collection()
        fields: dict[str, Any] = {"status": status.value}
        if answered_at is not None:
            fields["answered_at"] = _stored_time(answered_at)
        async with call_write_lock(call_id):
            changed = await update_if(
                calls, oid, {"ended_at": None, "status": {"$in": earlier}}, fields
            )
            if answered_at is not None and not changed:
                # By `_id` alone (see `_set_fact`); after the end it is harmless.
                await calls.update_one(
                    {"_id": oid}, {"$set": {"answered_at": fields["answered_at"]}}
                )
        if not changed and await calls.find_one({"_id": oid}, {"_id": 1}) is None:
            raise CallNotFound(f"no call {call_id!r}")
        return changed

    async def _set_fact(self, call_id: str, fields: dict[str, Any]) -> None:
        """Record an identifier or fact that holds whether or not the call has ended.

        The filter is the `_id` alone: FerretDB 1.24 answers that in SQL, any other filter
        by decoding every call in Go (see README, Performance).
        """
        async with call_write_lock(call_id):
            result = await CallDocument.get_pymongo_collection().update_one(
                {"_id": _object_id(call_id, what="call")}, {"$set": fields}
            )
        if result.matched_count == 0:
            raise CallNotFound(f"no call {call_id!r}")

    @_driver_errors
    async def set_stream(self, call_id: str, stream_sid: str) -> None:
        await self._set_fact(call_id, {"stream_sid": stream_sid})

    @_driver_errors
    async def set_call_sid(self, call_id: str, call_sid: str) -> None:
        """The carrier's id of a call placed by the gateway, once the carrier returned it."""
        await self._set_fact(call_id, {"call_sid": call_sid})
        doc = await CallDocument.get_pymongo_collection().find_one(
            {"_id": _object_id(call_id, what="call")}, {"started_at": 1}
        )
        if doc is not None:
            started = _utc(doc["started_at"])
            assert started is not None
            await self._keys.note_sid(call_sid, call_id, started)

    @_driver_errors
    async def set_answered_by(self, call_id: str, answered_by: str) -> None:
        """Twilio's answering-machine verdict, while the call is open: a callback replayed
        after the end changes nothing. Read, then written by `_id` alone (see `_set_fact`)."""
        oid = _object_id(call_id, what="call")
        calls = CallDocument.get_pymongo_collection()
        async with call_write_lock(call_id):
            doc = await calls.find_one({"_id": oid}, {"ended_at": 1})
            if doc is None:
                raise CallNotFound(f"no call {call_id!r}")
            if doc.get("ended_at") is None:
                await calls.update_one({"_id": oid}, {"$set": {"answered_by": answered_by}})

    @_driver_errors
    async def set_recording(self, call_id: str, state: RecordingState) -> None:
        """Store where the call's recording is (replaces the whole state; by `_id` alone)."""
        if state.egress_id:
            await self._keys.note_egress(state.egress_id, call_id)
        await self._set_fact(call_id, {"recording": state.model_dump()})

    @_driver_errors
    async def set_served_by(self, call_id: str, gateway_id: str) -> None:
        """The gateway `gateway_id` serves the call's audio from now on (holds its lease)."""
        await self._keys.mark(OPEN_CALLS, call_id, at=_stored_time(datetime.now(UTC)))
        await self._set_fact(call_id, {"served_by": gateway_id})

    @_driver_errors
    async def served_calls(self) -> list[CallRecord]:
        """Open calls a gateway took (they hold its lease), without turns: read from the
        rows of open calls (`storage.call_index`), never every call."""
        docs = await self._keys.flagged(
            OPEN_CALLS,
            lambda d: d.ended_at is None and d.served_by is not None,
            limit=1_000_000,
            now=datetime.now(UTC),
        )
        return [_call_record(d) for d in docs]

    @_driver_errors
    async def live_calls(self, org_id: str | None) -> LiveCallCount:
        """The organisation's unfinished calls, by direction (`storage.live_calls`)."""
        return await self._live.count(org_id)

    @_driver_errors
    async def live_call_ids(self, org_id: str | None) -> frozenset[str]:
        """The ids of the organisation's calls not finished yet, as its rows say (one query;
        a call missing from them is finished or was never stored)."""
        return await self._live.ids(org_id)

    @_driver_errors
    async def get_call_by_egress(self, egress_id: str) -> CallRecord | None:
        """The call whose recording is the LiveKit egress `egress_id`, without turns."""
        call_id = await self._keys.call_by_egress(egress_id)
        if call_id is None:
            return None
        doc = await CallDocument.get(_object_id(call_id, what="call"))
        if doc is None or (doc.recording or {}).get("egress_id") != egress_id:
            return None
        return _call_record(doc)

    async def _stored_next_index(self, call_id: str) -> int:
        return await self._keys.next_turn_index(call_id)

    @_driver_errors
    async def add_turn(
        self,
        call_id: str,
        *,
        speaker: Speaker,
        text: str,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
        latency: Mapping[str, float] | None = None,
        turn_id: str | None = None,
        first_attempt: bool = False,
    ) -> TurnRecord:
        """Store one turn at the call's next position: a single insert. With `turn_id`
        (`new_turn_id()`) a retry of a write whose answer was lost stores nothing twice;
        `first_attempt` says the id was never sent before, so no earlier attempt is looked
        for (one read fewer per turn)."""
        oid = _object_id(turn_id, what="turn") if turn_id is not None else None
        if (
            oid is not None
            and not first_attempt
            and (stored := await TurnDocument.get(oid)) is not None
        ):
            # An earlier attempt was stored although its answer never came.
            return _turn_record(stored)
        turn_oid = oid if oid is not None else PydanticObjectId()
        for _ in range(8):
            if call_id not in self._next_index:
                self._next_index[call_id] = await self._stored_next_index(call_id)
            index = self._next_index[call_id]
            # The position is claimed by the insert of its slot (`storage.call_index`).
            if not await self._keys.claim_turn(call_id, index, str(turn_oid)):
                self._next_index.pop(call_id, None)  # another writer took it: read again
                continue
            self._next_index[call_id] = index + 1
            doc = TurnDocument(
                id=turn_oid,
                call_id=call_id,
                index=index,
                speaker=speaker,
                text=text,
                start_ms=round(start_ms, 1),
                end_ms=round(end_ms, 1),
                interrupted=interrupted,
                latency=dict(latency) if latency else None,
                created_at=_stored_time(datetime.now(UTC)),
            )
            try:
                await doc.insert()
            except DuplicateKeyError:
                if (stored := await TurnDocument.get(turn_oid)) is not None:
                    return _turn_record(stored)  # stored by a retry racing this one
                continue  # a turn stored at this position before slots existed: the next
            return _turn_record(doc)
        raise StorageError(f"could not find a free turn position for call {call_id!r}")

    @_driver_errors
    async def update_turn(
        self, turn_id: str, *, text: str, end_ms: float, interrupted: bool
    ) -> None:
        """Rewrite a turn in place, e.g. cut an agent turn to what the caller heard."""
        turns = TurnDocument.get_pymongo_collection()
        result = await turns.update_one(
            {"_id": _object_id(turn_id, what="turn")},
            {"$set": {"text": text, "end_ms": round(end_ms, 1), "interrupted": interrupted}},
        )
        if result.matched_count == 0:
            raise StorageError(f"no turn {turn_id!r}")

    @_driver_errors
    async def finish_call(
        self,
        call_id: str,
        *,
        status: CallStatus,
        end_reason: str,
        ended_at: datetime,
        usage: CallUsage | None = None,
        cost: CallCost | None = None,
        with_turns: bool = False,
    ) -> CallRecord:
        """Record the outcome once: finishing an already finished call keeps the first
        (its usage and cost too).
        Returns the call as stored, its turns only if asked: a caller that only finishes
        the call waits for no read after the write (a read that failed would look like a
        finish that failed)."""
        async with call_write_lock(call_id):
            doc = await self._finish_once(call_id, status, end_reason, ended_at, usage, cost)
        self._next_index.pop(call_id, None)
        try:
            await self._keys.unmark(OPEN_CALLS, call_id)
            await self._live.remove(call_id)
        except PyMongoError:  # a reader drops it later
            log.warning("dropping an open call's row failed", extra={"call_id": call_id})
        await self._drop_carrier_notes(call_id)
        if with_turns:
            return await self.get_call(call_id)
        return _call_record(doc)

    async def _drop_carrier_notes(self, call_id: str) -> None:
        """The call is finished: what the carrier said beside it is spent (by `_id`, cheap;
        a note that is left, or written after this, expires)."""
        for name in CARRIER_NOTE_INDEXES:
            try:
                await _carrier_notes(name).delete_one({"_id": call_id})
            except PyMongoError:  # the call is finished all the same
                log.warning("deleting a carrier note failed", extra={"call_id": call_id})

    async def _finish_once(
        self,
        call_id: str,
        status: CallStatus,
        end_reason: str,
        ended_at: datetime,
        usage: CallUsage | None,
        cost: CallCost | None,
    ) -> CallDocument:
        """The call's document once finished (by this write, or by the one before it)."""
        oid = _object_id(call_id, what="call")
        doc = await CallDocument.get(oid)
        if doc is None:
            raise CallNotFound(f"no call {call_id!r}")
        if doc.ended_at is not None:
            return doc
        ended = _stored_time(ended_at)
        started = _utc(doc.started_at)
        assert started is not None
        duration = max(0.0, (ended - started).total_seconds())
        turns = await self._keys.turns(call_id)
        p50, p95 = _latency_percentiles([t.latency for t in turns if t.latency])
        fields: dict[str, Any] = {
            "status": status.value,
            "end_reason": end_reason,
            "ended_at": ended,
            "duration_s": round(duration, 3),
            "latency_p50": p50,
            "latency_p95": p95,
            "usage": usage.model_dump(mode="json") if usage is not None else None,
            "cost": cost.model_dump(mode="json") if cost is not None else None,
            "report_pending": True,
            # Its analysis is owed too (`storage.analyses`), from this same write.
            "analysis": ANALYSIS_PENDING,
            "analysis_pending": True,
        }
        # Rows first (`storage.call_index`): what is owed is read from them.
        marked = _stored_time(datetime.now(UTC))
        await self._keys.mark(OWED_REPORTS, call_id, at=marked)
        await self._keys.mark(OWED_ANALYSES, call_id, at=marked)
        if doc.answered_by is None:
            # Said while another gateway served the call (`record_carrier_answer`).
            answer = await _carrier_notes(CARRIER_ANSWERS).find_one({"_id": call_id})
            if answer is not None:
                fields["answered_by"] = str(answer["answered_by"])
        # The filter on ended_at makes the first of two racing finishes win.
        if await update_if(
            CallDocument.get_pymongo_collection(), doc.id, {"ended_at": None}, fields
        ):
            if doc.index_key is not None:
                await self._keys.finished(doc.index_key, status.value)
            written: CallDocument = doc.model_copy(update=fields)  # exactly what was written
            return written
        won = await CallDocument.get(oid)  # another process finished it first
        if won is None:
            raise CallNotFound(f"no call {call_id!r}")
        return won

    @_driver_errors
    async def record_carrier_end(
        self, call_id: str, *, status: CallStatus, reason: str, at: datetime
    ) -> None:
        """The carrier says the call ended while a gateway still serves it. Kept beside the
        call, one insert by `_id` (the first is kept), never a rewrite of the call's
        document: FerretDB 1.24 rewrites a document whole, so an update here could undo the
        finish its serving gateway writes at the same moment."""
        at = _stored_time(at)
        with contextlib.suppress(DuplicateKeyError):
            await _carrier_ends().insert_one(
                {
                    "_id": call_id,
                    "status": status.value,
                    "reason": reason,
                    "at": at,
                    "expires_at": at + CARRIER_NOTE_KEEP,
                }
            )

    @_driver_errors
    async def carrier_end(self, call_id: str) -> tuple[CallStatus, str] | None:
        """The carrier's end of the call, if one was recorded (`record_carrier_end`)."""
        doc = await _carrier_ends().find_one({"_id": call_id})
        return (CallStatus(doc["status"]), str(doc["reason"])) if doc is not None else None

    @_driver_errors
    async def record_carrier_answer(self, call_id: str, answered_by: str, *, at: datetime) -> None:
        """Twilio's answering-machine verdict for a call another gateway serves, kept
        beside the call as `record_carrier_end` is (the first is kept); the call's finish,
        whoever writes it, copies it onto the call."""
        at = _stored_time(at)
        with contextlib.suppress(DuplicateKeyError):
            await _carrier_notes(CARRIER_ANSWERS).insert_one(
                {
                    "_id": call_id,
                    "answered_by": answered_by,
                    "at": at,
                    "expires_at": at + CARRIER_NOTE_KEEP,
                }
            )

    @_driver_errors
    async def carrier_answer(self, call_id: str) -> str | None:
        """The carrier's answering-machine verdict kept beside the call, if any
        (`record_carrier_answer`; one read by `_id`: a screened call's gate polls it)."""
        doc = await _carrier_notes(CARRIER_ANSWERS).find_one({"_id": call_id})
        return str(doc["answered_by"]) if doc is not None else None

    @_driver_errors
    async def get_call(self, call_id: str, *, with_turns: bool = True) -> CallRecord:
        """The call with its turns in order (or none read); `CallNotFound` if there is none."""
        doc = await CallDocument.get(_object_id(call_id, what="call"))
        if doc is None:
            raise CallNotFound(f"no call {call_id!r}")
        if not with_turns:
            return _call_record(doc)
        turns = await self._keys.turns(call_id)
        return _call_record(doc, tuple(_turn_record(t) for t in turns))

    @_driver_errors
    async def get_call_by_sid(self, call_sid: str) -> CallRecord | None:
        """The newest call with this transport id, without turns (by its key in
        `call_sids`, `storage.call_index`)."""
        call_id = await self._keys.call_by_sid(call_sid)
        if call_id is None:
            return None
        doc = await CallDocument.get(_object_id(call_id, what="call"))
        return _call_record(doc) if doc is not None and doc.call_sid == call_sid else None

    @_driver_errors
    async def list_calls(
        self, where: CallFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> CallPage:
        """The newest matching calls first, without turns; `next_cursor` resumes after them.
        An organisation's calls are read through their keys (`storage.call_index`): the
        same page on every store, at the same cost whatever the number of calls stored."""
        if limit < 1:
            return CallPage(items=[], next_cursor=None)
        where = where or CallFilter()
        if where.org_id is not None:
            docs = await self._keyed_page(where, limit, cursor)
        else:
            docs = await self._queried_page(where, limit, cursor)
        more = len(docs) > limit
        docs = docs[:limit]
        return CallPage(
            items=[_call_record(d) for d in docs],
            next_cursor=_encode_cursor(docs[-1]) if more else None,
        )

    async def _keyed_page(
        self, where: CallFilter, limit: int, cursor: str | None
    ) -> list[CallDocument]:
        assert where.org_id is not None
        bounds: list[tuple[int, str]] = []
        if cursor is not None:
            started, oid = _decode_cursor(cursor)
            aware = _utc(started)
            assert aware is not None
            bounds.append((millis(aware), str(oid)))
        if where.started_before is not None:
            bounds.append((millis(_stored_time(where.started_before)), ""))
        after = _stored_time(where.started_after) if where.started_after is not None else None

        def accept(doc: CallDocument) -> bool:
            return (
                doc.org_id == where.org_id
                and (where.assistant_id is None or doc.assistant_id == where.assistant_id)
                and (where.status is None or doc.status == where.status.value)
                and (where.direction is None or doc.direction == where.direction.value)
            )

        return await self._keys.page(
            where.org_id,
            limit=limit,
            before=min(bounds) if bounds else None,
            not_before_ms=millis(after) if after is not None else None,
            assistant_id=where.assistant_id,
            direction=where.direction.value if where.direction is not None else None,
            status=where.status.value if where.status is not None else None,
            accept=accept,
        )

    async def _queried_page(
        self, where: CallFilter, limit: int, cursor: str | None
    ) -> list[CallDocument]:
        """Every organisation's calls (an operator's view): one query (a scan on FerretDB)."""
        query = _call_query(where)
        if cursor is not None:
            started, oid = _decode_cursor(cursor)
            after = {
                "$or": [
                    {"started_at": {"$lt": started}},
                    {"started_at": started, "_id": {"$lt": oid}},
                ]
            }
            query = {"$and": [query, after]} if query else after
        return (
            await CallDocument.find(query)
            .sort([("started_at", SortDirection.DESCENDING), ("_id", SortDirection.DESCENDING)])
            .limit(limit + 1)
            .to_list()
        )
