"""Gateway leases: each gateway process beats a heartbeat document while it runs, and every
call it serves names it (`served_by` on the call). A call is lost when its gateway's
heartbeat stops changing; which gateway decides that, and when, is `gateway.call.lease`.

One heartbeat per gateway, written by `_id` alone (FerretDB 1.24 answers that in SQL), so
renewing costs the same whatever the number of calls. `HeartbeatWriter` has its own
synchronous connection: it is driven from a thread of its own, never the event loop.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from pymongo import MongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from storage.calls import _driver_errors, _stored_time
from storage.documents import CallDocument
from storage.errors import StorageError
from storage.redaction import redact_credentials

_COLLECTION = "gateway_leases"


def _leases() -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[_COLLECTION]


class LeaseRepository:
    """Reads the gateways' heartbeats (on the database `open_database` opened)."""

    @_driver_errors
    async def beats(self, gateway_ids: Collection[str]) -> dict[str, datetime]:
        """The last beat of each of `gateway_ids` that has a heartbeat (a gateway that
        stopped cleanly has none)."""
        if not gateway_ids:
            return {}
        cursor = _leases().find({"_id": {"$in": list(gateway_ids)}}, {"beat_at": 1})
        return {str(doc["_id"]): doc["beat_at"] async for doc in cursor}


class HeartbeatWriter:
    """One gateway's heartbeat, written through a connection of its own (blocking calls:
    run them on a thread)."""

    def __init__(self, url: str, db_name: str, gateway_id: str, *, timeout_s: float = 5.0):
        self.gateway_id = gateway_id
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            socketTimeoutMS=int(timeout_s * 1000),
        )
        self._leases = self._client[db_name][_COLLECTION]

    def beat(self, *, at: datetime, lease_s: float) -> None:
        """The gateway is alive at `at`."""
        try:
            self._leases.update_one(
                {"_id": self.gateway_id},
                {"$set": {"beat_at": _stored_time(at), "lease_s": lease_s}},
                upsert=True,
            )
        except PyMongoError as exc:
            raise StorageError(f"heartbeat not written: {redact_credentials(str(exc))}") from exc

    def remove(self) -> None:
        """The gateway stops (cleanly): its heartbeat goes."""
        try:
            self._leases.delete_one({"_id": self.gateway_id})
        except PyMongoError as exc:
            raise StorageError(f"heartbeat not removed: {redact_credentials(str(exc))}") from exc

    def close(self) -> None:
        self._client.close()
