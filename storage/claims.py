"""Once-only claims, whichever gateway on the database asks first: a Twilio call gets one
media stream (`stream_claims`, keyed by the call id), a LiveKit webhook event is acted on
once (`livekit_events`, keyed by the event id).

FerretDB 1.24 has no atomic conditional update (see `storage.deliveries`); its one atomic
check-and-set is an insert whose `_id` is taken already (SQLite's primary key), so a
claim is exactly that insert, on MongoDB as on FerretDB. Each claim carries `expires_at`,
after which it cannot matter any more; FerretDB 1.24 has no TTL indexes, so the gateway
deletes expired ones with `prune_expired` from background work (`gateway.services`), never
on a claim's path: on MongoDB the `expires_at` index makes that delete an index range, on
FerretDB it reads the collection (which those deletes keep to one retention period). The
carrier's notes beside a call (`storage.calls`) expire the same way and are pruned here too.

Work that is claimed again and again (a webhook delivery's attempts, a call's analysis and
its re-runs) goes by generations: `take_next_token` inserts token `<key>#<g+1>` of the
generation after the one its record was read at, so exactly one writer gets each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.calls import CARRIER_NOTE_INDEXES, _driver_errors, _stored_time, _utc
from storage.documents import CallDocument

STREAM_CLAIMS = "stream_claims"
LIVEKIT_EVENTS = "livekit_events"
# A call's stream claim outlives any call (at most 4 h) and any stream token: until then a
# replayed start finds it, whatever the call's own document says.
STREAM_CLAIM_KEEP = timedelta(days=1)
# Claims of calls' analyses (`storage.analyses`): generation tokens, pruned once expired.
ANALYSIS_CLAIMS = "analysis_claims"

# The indexes `open_database` creates (by name, as for the documents).
CLAIM_INDEXES: dict[str, list[IndexModel]] = {
    name: [IndexModel([("expires_at", ASCENDING)], name="expires_at")]
    for name in (STREAM_CLAIMS, LIVEKIT_EVENTS, ANALYSIS_CLAIMS)
}
# Every collection whose records carry `expires_at`, with its indexes (`open_database`).
EXPIRING_INDEXES = CLAIM_INDEXES | CARRIER_NOTE_INDEXES


def _collection(name: str) -> AsyncCollection[dict[str, Any]]:
    return CallDocument.get_pymongo_collection().database[name]


async def take_token(
    collection: str,
    key: str,
    gen: int,
    *,
    owner: str,
    kind: str,
    now: datetime,
    until: datetime,
    fields: dict[str, Any] | None = None,
) -> bool:
    """Insert token `gen` of `key` (`_id` = `<key>#<gen>`): True for the one writer that gets
    it. `until` is when the token stops mattering if its writer never acts on it."""
    try:
        await _collection(collection).insert_one(
            {
                "_id": f"{key}#{gen}",
                "gen": gen,
                "owner": owner,
                "kind": kind,
                "at": now,
                "until": until,
                **(fields or {}),
            }
        )
    except DuplicateKeyError:
        return False
    return True


async def take_next_token(
    collection: str,
    key: str,
    read_gen: int,
    *,
    owner: str,
    kind: str,
    now: datetime,
    until: datetime,
    fields: dict[str, Any] | None = None,
    skips: int = 3,
) -> int | None:
    """The generation after `read_gen` (the one the record was read at), if this writer gets
    it. A taken token whose writer never acted on it (it died in between) is skipped once
    its `until` has passed; a live one means another writer is at work (None)."""
    gen = read_gen + 1
    for _ in range(skips):
        if await take_token(
            collection, key, gen, owner=owner, kind=kind, now=now, until=until, fields=fields
        ):
            return gen
        taken = await _collection(collection).find_one({"_id": f"{key}#{gen}"})
        if taken is None or _token_until(taken) >= now:
            return None
        gen += 1
    return None


async def token(collection: str, key: str, gen: int) -> dict[str, Any] | None:
    """Token `gen` of `key` as stored, if it was taken."""
    return await _collection(collection).find_one({"_id": f"{key}#{gen}"})


def _token_until(raw: dict[str, Any]) -> datetime:
    until = _utc(cast(datetime, raw["until"]))
    return until if until is not None else datetime.min.replace(tzinfo=UTC)


class ClaimRepository:
    """Single-use claims (on the database `open_database` opened)."""

    async def _claim(self, name: str, key: str, fields: dict[str, Any], *, now: datetime) -> bool:
        try:
            await _collection(name).insert_one(
                {"_id": key, "claimed_at": _stored_time(now), **fields}
            )
        except DuplicateKeyError:
            return False
        return True

    @_driver_errors
    async def prune_expired(self, now: datetime) -> None:
        """Delete the claims and carrier notes past their `expires_at` (a scan on FerretDB:
        background work only)."""
        for name in EXPIRING_INDEXES:
            await _collection(name).delete_many({"expires_at": {"$lt": _stored_time(now)}})

    @_driver_errors
    async def claim_stream(
        self, call_id: str, *, call_sid: str, stream_sid: str, token_nonce: str, now: datetime
    ) -> bool:
        """Make `stream_sid` the call's one media stream: False if it has one already (on
        any gateway, now or within `STREAM_CLAIM_KEEP`)."""
        fields = {
            "call_sid": call_sid,
            "stream_sid": stream_sid,
            "token_nonce": token_nonce,
            "expires_at": _stored_time(now + STREAM_CLAIM_KEEP),
        }
        return await self._claim(STREAM_CLAIMS, call_id, fields, now=now)

    @_driver_errors
    async def stream_claimed(self, call_id: str) -> bool:
        """Whether the call has had a media stream (one read by `_id`)."""
        return await _collection(STREAM_CLAIMS).find_one({"_id": call_id}, {"_id": 1}) is not None

    @_driver_errors
    async def claim_event(
        self, event_id: str, *, event: str, now: datetime, keep_until: datetime
    ) -> bool:
        """Take LiveKit webhook event `event_id` for acting on it: False if it was taken
        before. `keep_until` is when its signed token can no longer be presented."""
        fields = {"event": event, "expires_at": _stored_time(keep_until)}
        return await self._claim(LIVEKIT_EVENTS, event_id, fields, now=now)

    @_driver_errors
    async def release_event(self, event_id: str) -> None:
        """Give an event back (acting on it failed), so LiveKit's retry is acted on."""
        await _collection(LIVEKIT_EVENTS).delete_one({"_id": event_id})
