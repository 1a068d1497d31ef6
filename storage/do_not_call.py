"""Each organisation's do-not-call list: numbers no campaign may dial.

`_id` = `<org>:<number>`, so the check before every attempt is one `_id` lookup (FerretDB
answers only `_id` equality in SQL). Listing scans the organisation's entries (an index on
MongoDB; a scan on FerretDB, for the API only).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from storage.calls import _driver_errors, _stored_time
from storage.documents import CallDocument

DO_NOT_CALL = "do_not_call"
DO_NOT_CALL_INDEXES: dict[str, list[IndexModel]] = {
    DO_NOT_CALL: [IndexModel([("org_id", ASCENDING), ("number", ASCENDING)], name="org_number")],
}
_DUPLICATE_KEY = 11000


def _collection() -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[DO_NOT_CALL]


class DoNotCallRepository:
    """The organisations' do-not-call lists (numbers in E.164, validated by the caller)."""

    @_driver_errors
    async def add(self, org_id: str, numbers: Iterable[str], *, at: datetime | None = None) -> int:
        """Add `numbers`; returns how many were not on the list already."""
        now = _stored_time(at or datetime.now(UTC))
        unique = sorted(set(numbers))
        if not unique:
            return 0
        docs = [
            {"_id": f"{org_id}:{number}", "org_id": org_id, "number": number, "added_at": now}
            for number in unique
        ]
        try:
            result = await _collection().insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
            return len(unique) - len(errors)
        return len(result.inserted_ids)

    @_driver_errors
    async def remove(self, org_id: str, number: str) -> bool:
        """Take `number` off the list; whether it was on it."""
        result = await _collection().delete_one({"_id": f"{org_id}:{number}"})
        return result.deleted_count > 0

    @_driver_errors
    async def list(self, org_id: str, *, after: str | None = None, limit: int = 100) -> list[str]:
        """The organisation's numbers in ascending order, those after `after` (the cursor)."""
        query: dict[str, Any] = {"org_id": org_id}
        if after is not None:
            query["number"] = {"$gt": after}
        raws = (
            await _collection()
            .find(query, {"number": 1})
            .sort("number", ASCENDING)
            .limit(limit)
            .to_list(None)
        )
        return [str(r["number"]) for r in raws]

    @_driver_errors
    async def blocked(self, org_id: str, number: str) -> bool:
        """Whether `number` is on the organisation's list (one `_id` lookup)."""
        found = await _collection().find_one({"_id": f"{org_id}:{number}"}, {"_id": 1})
        return found is not None
