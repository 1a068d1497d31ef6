"""Calls and their transcript turns: the typed API the gateway uses, over beanie documents."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ParamSpec, Protocol, TypeVar

from beanie import PydanticObjectId, SortDirection
from bson.errors import InvalidId
from pymongo.errors import PyMongoError

from storage.documents import CallDocument, TurnDocument
from storage.errors import CallNotFound, StorageError
from storage.models import CallRecord, CallStatus, Direction, NewCall, Speaker, TurnRecord

P = ParamSpec("P")
R = TypeVar("R")

_FINAL = {
    CallStatus.COMPLETED,
    CallStatus.FAILED,
    CallStatus.BUSY,
    CallStatus.NO_ANSWER,
    CallStatus.CANCELED,
}


def _driver_errors(
    func: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """Map driver exceptions to `StorageError` at this boundary."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except PyMongoError as exc:
            raise StorageError(f"database error: {exc}") from exc

    return wrapper


class CallStore(Protocol):
    """What the session and the routes need from call storage."""

    async def create_call(self, call: NewCall, *, started_at: datetime) -> CallRecord: ...
    async def set_status(self, call_id: str, status: CallStatus) -> None: ...
    async def set_stream(self, call_id: str, stream_sid: str) -> None: ...
    async def add_turn(
        self,
        call_id: str,
        *,
        speaker: Speaker,
        text: str,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
    ) -> TurnRecord: ...
    async def update_turn(
        self, turn_id: str, *, text: str, end_ms: float, interrupted: bool
    ) -> None: ...
    async def finish_call(
        self, call_id: str, *, status: CallStatus, end_reason: str, ended_at: datetime
    ) -> CallRecord: ...
    async def get_call(self, call_id: str) -> CallRecord: ...
    async def get_call_by_sid(self, call_sid: str) -> CallRecord | None: ...
    async def list_calls(self, *, limit: int = 50) -> list[CallRecord]: ...


def _object_id(call_id: str) -> PydanticObjectId:
    try:
        return PydanticObjectId(call_id)
    except (InvalidId, TypeError) as exc:
        raise CallNotFound(f"no call {call_id!r}") from exc


def _utc(value: datetime | None) -> datetime | None:
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
    )


def _call_record(doc: CallDocument, turns: tuple[TurnRecord, ...] = ()) -> CallRecord:
    started = _utc(doc.started_at)
    assert started is not None
    return CallRecord(
        id=str(doc.id),
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
    )


class CallRepository:
    """`CallStore` on MongoDB (through beanie); initialise beanie first (`open_database`)."""

    def __init__(self) -> None:
        self._next_index: dict[str, int] = {}

    @_driver_errors
    async def create_call(self, call: NewCall, *, started_at: datetime) -> CallRecord:
        doc = CallDocument(
            transport=call.transport,
            call_sid=call.call_sid,
            stream_sid=call.stream_sid,
            from_number=call.from_number,
            to_number=call.to_number,
            direction=call.direction.value,
            assistant_id=call.assistant_id,
            metadata=dict(call.metadata),
            status=CallStatus.RINGING.value,
            started_at=started_at,
        )
        await doc.insert()
        return _call_record(doc)

    async def _update(self, call_id: str, fields: dict[str, Any]) -> None:
        result = await CallDocument.find_one(CallDocument.id == _object_id(call_id)).update(
            {"$set": fields}
        )
        if result is not None and getattr(result, "matched_count", 1) == 0:
            raise CallNotFound(f"no call {call_id!r}")

    @_driver_errors
    async def set_status(self, call_id: str, status: CallStatus) -> None:
        await self._update(call_id, {"status": status.value})

    @_driver_errors
    async def set_stream(self, call_id: str, stream_sid: str) -> None:
        await self._update(call_id, {"stream_sid": stream_sid})

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
    ) -> TurnRecord:
        if call_id not in self._next_index:
            self._next_index[call_id] = await TurnDocument.find(
                TurnDocument.call_id == call_id
            ).count()
        index = self._next_index[call_id]
        self._next_index[call_id] = index + 1
        doc = TurnDocument(
            call_id=call_id,
            index=index,
            speaker=speaker,
            text=text,
            start_ms=round(start_ms, 1),
            end_ms=round(end_ms, 1),
            interrupted=interrupted,
            created_at=datetime.now(UTC),
        )
        await doc.insert()
        return _turn_record(doc)

    @_driver_errors
    async def update_turn(
        self, turn_id: str, *, text: str, end_ms: float, interrupted: bool
    ) -> None:
        await TurnDocument.find_one(TurnDocument.id == _object_id(turn_id)).update(
            {"$set": {"text": text, "end_ms": round(end_ms, 1), "interrupted": interrupted}}
        )

    @_driver_errors
    async def finish_call(
        self, call_id: str, *, status: CallStatus, end_reason: str, ended_at: datetime
    ) -> CallRecord:
        doc = await CallDocument.get(_object_id(call_id))
        if doc is None:
            raise CallNotFound(f"no call {call_id!r}")
        if doc.ended_at is None and CallStatus(doc.status) not in _FINAL:
            started = _utc(doc.started_at)
            assert started is not None
            duration = max(0.0, (ended_at - started).total_seconds())
            # Only a call not yet finished is updated: finishing twice keeps the first.
            await CallDocument.find_one(
                CallDocument.id == doc.id,
                CallDocument.ended_at == None,  # noqa: E711
            ).update(
                {
                    "$set": {
                        "status": status.value,
                        "end_reason": end_reason,
                        "ended_at": ended_at,
                        "duration_s": round(duration, 3),
                    }
                }
            )
        self._next_index.pop(call_id, None)
        return await self.get_call(call_id)

    @_driver_errors
    async def get_call(self, call_id: str) -> CallRecord:
        doc = await CallDocument.get(_object_id(call_id))
        if doc is None:
            raise CallNotFound(f"no call {call_id!r}")
        turns = (
            await TurnDocument.find(TurnDocument.call_id == call_id)
            .sort([("index", SortDirection.ASCENDING)])
            .to_list()
        )
        return _call_record(doc, tuple(_turn_record(t) for t in turns))

    @_driver_errors
    async def get_call_by_sid(self, call_sid: str) -> CallRecord | None:
        doc = await CallDocument.find_one(CallDocument.call_sid == call_sid)
        return None if doc is None else _call_record(doc)

    @_driver_errors
    async def list_calls(self, *, limit: int = 50) -> list[CallRecord]:
        docs = (
            await CallDocument.find_all()
            .sort([("started_at", SortDirection.DESCENDING), ("_id", SortDirection.DESCENDING)])
            .limit(limit)
            .to_list()
        )
        return [_call_record(d) for d in docs]
