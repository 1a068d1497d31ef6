"""Each organisation's live calls, counted cheaply for its cap on concurrent calls
(`Organization.max_concurrent_calls`).

`live_calls` holds one small row per unfinished call (`_id` = the call id, with its
organisation and direction), inserted before the call is stored and deleted when it is
finished (`CallRepository.create_call` / `finish_call`), so counting an organisation's
live calls reads this short collection (filtered by `org_id`: a scan of live calls only on
FerretDB, the `org_id` index on MongoDB), never the calls. A row is a hint: a row older
than `_SETTLE_S` whose call is finished (its delete failed, or a process died between the
two writes) or was never stored is dropped by the reader, which checks each old row's
call by `_id` at most every `_RECHECK_S`; so is the row of a call still queued or ringing,
never taken by a gateway, `_RING_BOUND_S` after it was stored (no call rings that long:
its final status was lost, and nothing else would ever finish it).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from beanie import PydanticObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection

from storage.documents import CallDocument

LIVE_CALLS = "live_calls"
LIVE_CALL_INDEXES: dict[str, list[IndexModel]] = {
    LIVE_CALLS: [IndexModel([("org_id", ASCENDING)], name="org_id")]
}
_SETTLE_S = 60.0  # younger rows count as they are: their call's insert may be under way
_RECHECK_S = 30.0
_RING_BOUND_S = 900.0
NO_ORG = "-"


@dataclass(frozen=True, slots=True)
class LiveCallCount:
    """An organisation's unfinished calls (ringing and queued outbound calls included)."""

    inbound: int
    outbound: int

    @property
    def total(self) -> int:
        return self.inbound + self.outbound


def _rows() -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[LIVE_CALLS]


class LiveCallRows:
    """The rows of unfinished calls, with this process's note of when each old row's call
    was last seen unfinished."""

    def __init__(self) -> None:
        self._checked: dict[str, float] = {}  # call id -> monotonic time it was seen live

    async def add(self, call_id: str, *, org_id: str | None, direction: str, at: datetime) -> None:
        await _rows().update_one(
            {"_id": call_id},
            {"$set": {"org_id": org_id or NO_ORG, "direction": direction, "at": at}},
            upsert=True,
        )

    async def remove(self, call_id: str) -> None:
        self._checked.pop(call_id, None)
        await _rows().delete_one({"_id": call_id})

    async def ids(self, org_id: str | None) -> frozenset[str]:
        """The ids of the organisation's rows (one query, unchecked): a call not among them
        is finished, or was never stored."""
        rows = await _rows().find({"org_id": org_id or NO_ORG}, {"_id": 1}).to_list()
        return frozenset(str(r["_id"]) for r in rows)

    async def count(self, org_id: str | None, *, now: datetime | None = None) -> LiveCallCount:
        """The organisation's live calls: its rows, less the settled ones whose call is
        finished (dropped now)."""
        now = now or datetime.now(UTC)
        rows = await _rows().find({"org_id": org_id or NO_ORG}).to_list()
        mono = time.monotonic()
        old = [
            r
            for r in rows
            if _age_s(r, now) >= _SETTLE_S
            and mono - self._checked.get(str(r["_id"]), -1e18) >= _RECHECK_S
        ]
        gone: set[str] = set()
        for start in range(0, len(old), 64):
            chunk = old[start : start + 64]
            docs = await asyncio.gather(*(_unfinished(str(r["_id"]), now) for r in chunk))
            for row, live in zip(chunk, docs, strict=True):
                call_id = str(row["_id"])
                if live:
                    self._checked[call_id] = mono
                else:
                    gone.add(call_id)
                    self._checked.pop(call_id, None)
                    await _rows().delete_one({"_id": call_id, "at": row.get("at")})
        inbound = outbound = 0
        for row in rows:
            if str(row["_id"]) in gone:
                continue
            if row.get("direction") == "inbound":
                inbound += 1
            else:
                outbound += 1
        return LiveCallCount(inbound=inbound, outbound=outbound)


def _age_s(row: dict[str, Any], now: datetime) -> float:
    at = row.get("at")
    if not isinstance(at, datetime):
        return 1e9
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (now - at).total_seconds()


async def _unfinished(call_id: str, now: datetime) -> bool:
    """Whether the call is stored, unfinished, and not a call left ringing past the bound
    (one read by `_id`)."""
    try:
        oid = PydanticObjectId(call_id)
    except (InvalidId, TypeError):
        return False
    doc = await CallDocument.get_pymongo_collection().find_one(
        {"_id": oid}, {"ended_at": 1, "status": 1, "served_by": 1, "started_at": 1}
    )
    if doc is None or doc.get("ended_at") is not None:
        return False
    ringing = doc.get("status") in ("queued", "ringing") and doc.get("served_by") is None
    return not (ringing and _age_s({"at": doc.get("started_at")}, now) >= _RING_BOUND_S)
