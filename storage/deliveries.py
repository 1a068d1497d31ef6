"""The webhook outbox: deliveries, their attempts, and the leases that keep two gateways
from sending the same attempt.

FerretDB 1.24 has no atomic read-modify-write: `findAndModify` and `update` read the
matching documents, then write each back whole by `_id`, so two gateways could both "win"
a conditional update. The one write it does atomically is an insert (SQLite's primary
key). So every change of who holds a delivery goes through an insert of a lease token
`<delivery id>#<generation>` in `webhook_leases`, and the delivery's `lease_gen` says which
generation its document reflects:

- claim: read a due, unleased delivery at generation g, insert token g+1 (a claim until
  the lease expires). Exactly one gateway wins g+1; only then is the delivery written.
- record_attempt: the holder of g inserts token g+1 ("done") before writing the outcome.
  If another gateway claimed g+1 after the lease expired, the insert fails and the stale
  holder writes nothing.
- redeliver: like a claim, by the API, only while nobody holds the delivery.

Deliveries of one call to one URL go out one at a time, in the order of their events'
`seq`: a claim passes over a delivery while an earlier one of the same call and URL is
still pending (being sent, or waiting for its retry). A delivery failed for good (or
delivered) no longer holds the ones after it; one queued without a `seq` is unordered.

A token whose writer died before it updated the delivery is skipped once its `until` has
passed. Winners write the delivery one generation after another, never two at once, so
FerretDB's whole-document writes lose nothing.

What is due lives in `webhook_due`, one small row per delivery still pending (`_id` = the
delivery id; its call, URL, `seq`, `next_attempt_at`, lease and `lease_gen`). FerretDB 1.24
answers only `_id` equality in SQL and reads the whole collection for any other filter or
sort, so the claim and its per-call ordering check read these rows, never the deliveries
(every delivery ever sent, with its body): a claim costs what is pending, not what is
stored. The delivery stays the record of truth, read by `_id` once its token is taken;
a row is a hint, kept in step by each writer after its token:

- enqueue inserts the row, then the delivery (a row whose delivery never came is dropped
  by a claim after `_ORPHAN_S`; while it lives it holds its call's later deliveries back,
  as the delivery would);
- a claim moves the row's lease after the delivery's; one that finds the delivery settled
  or not yet due gives its token back (deletes it: it wrote nothing) and drops or corrects
  the row;
- record_attempt moves the row to the retry, or deletes it once delivered or failed;
- redeliver writes the delivery, then the row.

A gateway that dies between two writes leaves a row missing or stale. A stale row costs at
most a claim that finds nothing to send; a pending delivery with no row is found again by
`repair_due`, which each outbox runs on start and about once a minute (it reads the pending
deliveries: a scan on FerretDB, off the claim's path), and which also gives rows to pending
deliveries stored before rows existed.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from beanie import SortDirection
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from storage.call_index import OWED_REPORTS, CallIndex
from storage.calls import (
    _call_record,
    _driver_errors,
    _object_id,
    _stored_time,
    _utc,
    call_write_lock,
)
from storage.claims import take_next_token, take_token
from storage.documents import CallDocument, OrganizationDocument, WebhookDeliveryDocument
from storage.errors import DeliveryBusy, NotFound, SecretRotationRaced, StorageError
from storage.models import CallRecord

DeliveryStatus = Literal["pending", "delivered", "failed"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Due rows read per claim (gateways racing for one try the next; those held back by an
# earlier delivery of their call are passed over, so more than the racers need).
_CANDIDATES = 50
_TOKEN_SKIPS = 3  # dead tokens skipped over in one claim before giving a delivery up
# A due row whose delivery is still missing this long after the row was queued belongs to
# an enqueue that died between its two inserts: dropped (younger ones may be in flight).
_ORPHAN_S = 30.0
_REPAIR_CHUNK = 500  # rows looked up per query by `repair_due`
_ROW_FIELDS = ("call_id", "url", "seq", "next_attempt_at", "lease_until", "lease_gen")


@dataclass(frozen=True, slots=True)
class Attempt:
    at: datetime
    status_code: int | None
    latency_ms: float
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    org_id: str | None
    call_id: str
    event: str
    url: str
    body: str
    status: DeliveryStatus
    attempts: tuple[Attempt, ...]
    attempt_count: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    # The lease generation this record was read at; a claim returns the one it holds.
    lease_gen: int = 0
    lease_owner: str | None = None
    lease_until: datetime = _EPOCH
    seq: int | None = None  # the event's place in its organisation's sequence


def _record(raw: dict[str, Any]) -> DeliveryRecord:
    """A record of a raw delivery document (raw: `lease_gen` is not a document field)."""
    doc = WebhookDeliveryDocument.model_validate(raw)

    def at(value: datetime | None) -> datetime:
        out = _utc(value)
        assert out is not None
        return out

    return DeliveryRecord(
        id=doc.id,
        org_id=doc.org_id,
        call_id=doc.call_id,
        event=doc.event,
        url=doc.url,
        body=doc.body,
        status=cast(DeliveryStatus, doc.status),
        attempts=tuple(
            Attempt(
                at=at(a["at"]),
                status_code=a.get("status_code"),
                latency_ms=a.get("latency_ms", 0.0),
                error=a.get("error"),
            )
            for a in doc.attempts
        ),
        attempt_count=doc.attempt_count,
        next_attempt_at=at(doc.next_attempt_at),
        created_at=at(doc.created_at),
        delivered_at=_utc(doc.delivered_at),
        lease_gen=int(raw.get("lease_gen", 0)),
        lease_owner=doc.lease_owner,
        lease_until=at(doc.lease_until),
        seq=doc.seq,
    )


def _aware(value: Any) -> datetime:
    """A stored time as an aware datetime (the client is tz_aware; documents built in memory
    may not be)."""
    out = _utc(cast(datetime, value))
    assert out is not None
    return out


def _deliveries() -> AsyncCollection[dict[str, Any]]:
    return WebhookDeliveryDocument.get_pymongo_collection()


WEBHOOK_LEASES = "webhook_leases"


def _tokens() -> AsyncCollection[dict[str, Any]]:
    return _deliveries().database[WEBHOOK_LEASES]


def _secrets() -> AsyncCollection[dict[str, Any]]:
    return _deliveries().database["webhook_secrets"]


WEBHOOK_DUE = "webhook_due"
# The indexes `open_database` creates: what MongoDB needs for the claim (due by time) and
# its ordering check (by call); FerretDB 1.24 scans the rows, which are only the pending.
DUE_INDEXES: dict[str, list[IndexModel]] = {
    WEBHOOK_DUE: [
        IndexModel([("next_attempt_at", ASCENDING)], name="next_attempt"),
        IndexModel([("call_id", ASCENDING), ("seq", ASCENDING)], name="call_seq"),
    ],
}


def _due() -> AsyncCollection[dict[str, Any]]:
    return _deliveries().database[WEBHOOK_DUE]


def _due_row(raw: dict[str, Any], *, queued_at: datetime) -> dict[str, Any]:
    """The due row of a delivery document (as stored or about to be)."""
    return {
        "_id": raw["_id"],
        "call_id": raw["call_id"],
        "url": raw["url"],
        "seq": raw.get("seq"),
        "next_attempt_at": raw["next_attempt_at"],
        "lease_until": raw.get("lease_until", _EPOCH),
        "lease_gen": int(raw.get("lease_gen", 0)),
        "queued_at": queued_at,
    }


async def _drop_row(row: dict[str, Any]) -> None:
    """Delete a due row as it was read: a newer one (a redelivery wrote it meanwhile, at a
    higher generation) stays."""
    await _due().delete_one({"_id": row["_id"], "lease_gen": {"$lte": int(row["lease_gen"])}})


async def _first_in_line(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates no pending delivery of the same call and URL with a smaller `seq`
    holds back (one query of the due rows for all of them: by call id, which MongoDB's
    `call_seq` index serves; FerretDB 1.24 scans the rows, i.e. what is pending)."""
    ordered = [raw for raw in candidates if raw.get("seq") is not None]
    if not ordered:
        return candidates
    call_ids = sorted({str(raw["call_id"]) for raw in ordered})
    pending = (
        await _due()
        .find(
            {"call_id": {"$in": call_ids}, "seq": {"$ne": None}},
            {"call_id": 1, "url": 1, "seq": 1},
        )
        .to_list()
    )
    first: dict[tuple[str, str], int] = {}
    for raw in pending:
        line = (str(raw["call_id"]), str(raw["url"]))
        first[line] = min(first.get(line, int(raw["seq"])), int(raw["seq"]))
    return [
        raw
        for raw in candidates
        if raw.get("seq") is None
        or int(raw["seq"]) <= first.get((str(raw["call_id"]), str(raw["url"])), int(raw["seq"]))
    ]


async def _take_token(
    delivery_id: str, gen: int, *, owner: str, kind: str, now: datetime, until: datetime
) -> bool:
    """Insert lease token `gen` of the delivery: True for the one writer that gets it."""
    return await take_token(
        WEBHOOK_LEASES, delivery_id, gen, owner=owner, kind=kind, now=now, until=until,
        fields={"delivery_id": delivery_id},
    )  # fmt: skip


async def _take_next(
    raw: dict[str, Any], *, owner: str, kind: str, now: datetime, until: datetime
) -> int | None:
    """The generation after the one `raw` was read at, if this writer gets it
    (`storage.claims.take_next_token`)."""
    return await take_next_token(
        WEBHOOK_LEASES, raw["_id"], int(raw.get("lease_gen", 0)), owner=owner, kind=kind,
        now=now, until=until, fields={"delivery_id": raw["_id"]}, skips=_TOKEN_SKIPS,
    )  # fmt: skip


async def _give_back(delivery_id: str, gen: int, owner: str) -> None:
    """Delete token `gen` taken by a claim that wrote nothing under it, so the next claim
    takes it at once rather than after its `until`."""
    await _tokens().delete_one({"_id": f"{delivery_id}#{gen}", "owner": owner})


async def _claim_row(
    row: dict[str, Any], *, owner: str, now: datetime, until: datetime
) -> DeliveryRecord | None:
    """Claim the delivery of a due row, or None: another gateway has it, or the row was
    stale (then corrected or dropped)."""
    gen = await _take_next(row, owner=owner, kind="claim", now=now, until=until)
    if gen is None:  # another gateway has it, or the row lags a delivery settled since
        settled = await _deliveries().find_one({"_id": row["_id"]}, {"status": 1})
        if settled is not None and settled["status"] != "pending":
            await _drop_row(row)
        return None
    # Read as its only writer now: the row is a hint, the delivery the truth.
    fresh = await _deliveries().find_one({"_id": row["_id"]})
    if fresh is None or fresh["status"] != "pending" or _aware(fresh["next_attempt_at"]) > now:
        # The row put right while the token is held, then the token given back.
        if fresh is not None and fresh["status"] == "pending":  # not due yet: say when
            await _due().update_one(
                {"_id": row["_id"]},
                {
                    "$set": {
                        "next_attempt_at": fresh["next_attempt_at"],
                        "lease_gen": int(fresh.get("lease_gen", 0)),
                        "lease_until": _EPOCH,
                    }
                },
            )
        else:
            queued = _aware(row.get("queued_at", _EPOCH))
            if fresh is not None or queued + timedelta(seconds=_ORPHAN_S) <= now:
                await _drop_row(row)  # settled, or an enqueue that died before its delivery
        await _give_back(row["_id"], gen, owner)
        return None
    lease = {"lease_gen": gen, "lease_owner": owner, "lease_until": until}
    row_lease = {"lease_gen": gen, "lease_until": until}
    # Both at once, in either order: a claim that dies between them leaves a lease that
    # expires at `until` whichever was written.
    await asyncio.gather(
        _deliveries().update_one({"_id": row["_id"]}, {"$set": lease}),
        _due().update_one({"_id": row["_id"]}, {"$set": row_lease}),
    )
    return _record({**fresh, **lease})


class WebhookRepository:
    """Reports owed by finished calls, and the deliveries made of them."""

    @_driver_errors
    async def owed_reports(self, limit: int = 500) -> list[CallRecord]:
        """Finished calls whose end-call report has not been queued yet (read from their
        rows, `storage.call_index`, never every call)."""
        docs = await CallIndex().flagged(
            OWED_REPORTS, lambda d: d.report_pending, limit=limit, now=datetime.now(UTC)
        )
        return [_call_record(d) for d in docs]

    @_driver_errors
    async def report_pending(self, call_id: str) -> bool:
        """Whether the finished call's report is still to be queued (one read by `_id`;
        False once `report_queued`, i.e. after its `call.ended` delivery was queued)."""
        doc = await CallDocument.get_pymongo_collection().find_one(
            {"_id": _object_id(call_id, what="call")}, {"report_pending": 1}
        )
        return bool(doc is not None and doc.get("report_pending"))

    @_driver_errors
    async def report_queued(self, call_id: str) -> None:
        """The call's report (its `call.ended` delivery, if any) has been queued."""
        async with call_write_lock(call_id):
            await CallDocument.get_pymongo_collection().update_one(
                {"_id": _object_id(call_id, what="call")}, {"$set": {"report_pending": False}}
            )
        await CallIndex().unmark(OWED_REPORTS, call_id)  # a report is owed once per call

    @_driver_errors
    async def enqueue(
        self,
        *,
        delivery_id: str,
        org_id: str | None,
        call_id: str,
        event: str,
        url: str,
        body: str,
        now: datetime,
        seq: int | None = None,
    ) -> bool:
        """Queue a delivery once: False if one with this id exists already. With `seq` (its
        event's place) it goes out after every pending delivery of the call to `url` with a
        smaller one."""
        if await self.queued(delivery_id):
            # Queued before (an event published again): no due row for it either, which
            # would hold the call's later deliveries back until a claim dropped it.
            return False
        doc = WebhookDeliveryDocument(
            id=delivery_id,
            org_id=org_id,
            call_id=call_id,
            event=event,
            url=url,
            body=body,
            next_attempt_at=_stored_time(now),
            lease_until=_EPOCH,
            created_at=_stored_time(now),
            seq=seq,
        )
        # The row first: a pending delivery always has one (ordering reads the rows).
        row = _due_row(
            {"_id": delivery_id, "call_id": call_id, "url": url, "seq": seq,
             "next_attempt_at": doc.next_attempt_at},
            queued_at=doc.created_at,
        )  # fmt: skip
        try:
            await _due().insert_one(row)
        except DuplicateKeyError:
            pass  # queued before (or its row outlived a crash): the claim settles which
        try:
            await doc.insert()
        except DuplicateKeyError:
            return False
        return True

    @_driver_errors
    async def queued(self, delivery_id: str) -> bool:
        """Whether the delivery exists (queued, whatever became of it since): one `_id` read."""
        return await _deliveries().find_one({"_id": delivery_id}, {"_id": 1}) is not None

    @_driver_errors
    async def claim(self, *, owner: str, now: datetime, lease_s: float) -> DeliveryRecord | None:
        """Take the most overdue pending delivery whose lease has expired and that no earlier
        pending delivery of its call and URL holds back, for `lease_s`."""
        taken = await self.claim_many(owner=owner, now=now, lease_s=lease_s, limit=1)
        return taken[0] if taken else None

    @_driver_errors
    async def claim_many(
        self, *, owner: str, now: datetime, lease_s: float, limit: int
    ) -> list[DeliveryRecord]:
        """Take up to `limit` deliveries as `claim` does, most overdue first, from one read
        of the due rows (at most one of each call and URL: the others wait behind it)."""
        now = _stored_time(now)
        until = _stored_time(now + timedelta(seconds=lease_s))
        candidates = (
            await _due()
            .find({"next_attempt_at": {"$lte": now}, "lease_until": {"$lt": now}})
            .sort([("next_attempt_at", 1)])
            .limit(max(_CANDIDATES, 2 * limit))
            .to_list()
        )
        # Rows of different calls (or URLs) at once: each claim is a few round trips.
        rows = await _first_in_line(candidates)
        taken: list[DeliveryRecord] = []
        while rows and len(taken) < limit:
            batch, rows = rows[: limit - len(taken)], rows[limit - len(taken) :]
            claims = await asyncio.gather(
                *(_claim_row(row, owner=owner, now=now, until=until) for row in batch)
            )
            taken.extend(record for record in claims if record is not None)
        return taken

    @_driver_errors
    async def repair_due(self) -> int:
        """Give every pending delivery a due row it lacks (a gateway died between two
        writes, or the delivery was queued before rows existed), and correct rows that lag
        their delivery's generation. Reads every pending delivery (a scan of all on
        FerretDB): background work, about once a minute. Returns the rows written."""
        fields = {name: 1 for name in (*_ROW_FIELDS, "created_at")}
        pending = await _deliveries().find({"status": "pending"}, fields).to_list()
        written = 0
        for start in range(0, len(pending), _REPAIR_CHUNK):
            chunk = pending[start : start + _REPAIR_CHUNK]
            ids = [raw["_id"] for raw in chunk]
            rows = {
                row["_id"]: row
                for row in await _due().find({"_id": {"$in": ids}}, {"lease_gen": 1}).to_list()
            }
            for raw in chunk:
                row = rows.get(raw["_id"])
                if row is None:
                    try:
                        await _due().insert_one(_due_row(raw, queued_at=raw["created_at"]))
                    except DuplicateKeyError:
                        continue  # queued or redelivered meanwhile, with its row
                    written += 1
                elif int(row.get("lease_gen", 0)) < int(raw.get("lease_gen", 0)):
                    # As read: a claim that moved the row meanwhile is not undone.
                    fix = _due_row(raw, queued_at=raw["created_at"])
                    del fix["_id"], fix["queued_at"]
                    result = await _due().update_one(
                        {"_id": raw["_id"], "lease_gen": row.get("lease_gen", 0)}, {"$set": fix}
                    )
                    written += result.modified_count
        return written

    @_driver_errors
    async def record_attempt(
        self,
        delivery_id: str,
        *,
        owner: str,
        lease_gen: int,
        attempt: Attempt,
        status: DeliveryStatus,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Store an attempt and its outcome while `owner` holds lease `lease_gen`; False (and
        nothing written) if it does not, e.g. its lease expired and another gateway claimed."""
        held = await _tokens().find_one({"_id": f"{delivery_id}#{lease_gen}"})
        if held is None or held["owner"] != owner:
            return False
        at = _stored_time(attempt.at)
        # The token's own lease: a writer that dies before the update below is skipped then.
        until = max(_aware(held["until"]), at + timedelta(seconds=60))
        if not await _take_token(
            delivery_id, lease_gen + 1, owner=owner, kind="done", now=at, until=until
        ):
            return False
        fields: dict[str, Any] = {
            "status": status,
            "lease_gen": lease_gen + 1,
            "lease_owner": None,
            "lease_until": _EPOCH,
        }
        if next_attempt_at is not None:
            fields["next_attempt_at"] = _stored_time(next_attempt_at)
        if status == "delivered":
            fields["delivered_at"] = at
        entry = {
            "at": at,
            "status_code": attempt.status_code,
            "latency_ms": round(attempt.latency_ms, 1),
            "error": attempt.error,
        }
        await _deliveries().update_one(
            {"_id": delivery_id},
            {"$set": fields, "$push": {"attempts": entry}, "$inc": {"attempt_count": 1}},
        )
        if status == "pending":
            row = {"lease_gen": lease_gen + 1, "lease_until": _EPOCH}
            if next_attempt_at is not None:
                row["next_attempt_at"] = fields["next_attempt_at"]
            await _due().update_one({"_id": delivery_id}, {"$set": row})
        else:
            await _drop_row({"_id": delivery_id, "lease_gen": lease_gen + 1})
        return True

    @_driver_errors
    async def list(
        self,
        org_id: str,
        *,
        status: DeliveryStatus | None = None,
        call_id: str | None = None,
        limit: int = 50,
    ) -> list[DeliveryRecord]:
        """The organisation's deliveries, newest first."""
        query: dict[str, Any] = {"org_id": org_id}
        if status is not None:
            query["status"] = status
        if call_id is not None:
            query["call_id"] = call_id
        raws = (
            await _deliveries()
            .find(query)
            .sort([("created_at", SortDirection.DESCENDING), ("_id", SortDirection.DESCENDING)])
            .limit(limit)
            .to_list()
        )
        return [_record(r) for r in raws]

    @_driver_errors
    async def get(self, org_id: str, delivery_id: str) -> DeliveryRecord:
        """A delivery of the organisation (another organisation's is `NotFound`)."""
        raw = await _deliveries().find_one({"_id": delivery_id})
        if raw is None or raw.get("org_id") != org_id:
            raise NotFound(f"no delivery {delivery_id!r}")
        return _record(raw)

    @_driver_errors
    async def redeliver(self, org_id: str, delivery_id: str, *, now: datetime) -> DeliveryRecord:
        """Queue a delivery again, now, with a fresh attempt budget (its history is kept).

        `DeliveryBusy` while a gateway holds its lease: writing then would race that
        gateway's outcome (and FerretDB would keep whichever whole document came last).
        """
        now = _stored_time(now)
        for _ in range(_TOKEN_SKIPS):
            current = await self.get(org_id, delivery_id)
            if current.lease_until >= now:
                raise DeliveryBusy(f"delivery {delivery_id!r} is being sent")
            raw = {"_id": delivery_id, "lease_gen": current.lease_gen}
            gen = await _take_next(raw, owner="api", kind="redeliver", now=now, until=now)
            if gen is None:
                continue  # a gateway claimed it meanwhile; look again
            await _deliveries().update_one(
                {"_id": delivery_id},
                {
                    "$set": {
                        "status": "pending",
                        "attempt_count": 0,
                        "next_attempt_at": now,
                        "lease_gen": gen,
                        "lease_owner": None,
                        "lease_until": _EPOCH,
                    }
                },
            )
            # After the delivery: a claim never sees a row of it that the delivery does not
            # bear out (dying in between leaves it to `repair_due`).
            row = _due_row(
                {"_id": delivery_id, "call_id": current.call_id, "url": current.url,
                 "seq": current.seq, "next_attempt_at": now, "lease_gen": gen},
                queued_at=now,
            )  # fmt: skip
            del row["_id"]
            await _due().update_one({"_id": delivery_id}, {"$set": row}, upsert=True)
            return await self.get(org_id, delivery_id)
        raise DeliveryBusy(f"delivery {delivery_id!r} is being sent")

    @_driver_errors
    async def webhook_secret(self, org_id: str) -> str:
        """The organisation's current signing secret, made the first time it is asked for."""
        versions = await _secret_versions(org_id)
        return versions[-1].secret if versions else await _first_secret(org_id)

    @_driver_errors
    async def signing_secrets(
        self, org_id: str, *, now: datetime, grace_s: float
    ) -> tuple[str, ...]:
        """The secrets a delivery is signed with, current first: a secret replaced less than
        `grace_s` ago is still signed with, so receivers that hold it keep verifying."""
        versions = await _secret_versions(org_id)
        if not versions:
            return (await _first_secret(org_id),)
        valid = [versions[-1].secret]
        for older, newer in zip(reversed(versions[:-1]), reversed(versions[1:]), strict=True):
            if newer.made_at is None or newer.made_at + timedelta(seconds=grace_s) <= now:
                break
            valid.append(older.secret)
        return tuple(valid)

    @_driver_errors
    async def rotate_webhook_secret(self, org_id: str, *, now: datetime) -> str:
        """Make a new current secret and return it (the old one stays valid for the grace
        period the outbox signs with).

        Made by an insert of generation g+1 (`_id` = `<org>#<g+1>`): of two rotations at
        once, exactly one insert wins; the other is `SecretRotationRaced` (FerretDB 1.24 has
        no atomic conditional update that could decide it).
        """
        versions = await _secret_versions(org_id)
        if not versions:
            await _first_secret(org_id)
            versions = await _secret_versions(org_id)
        generation = versions[-1].generation + 1
        secret = _new_secret()
        try:
            await _secrets().insert_one(
                {
                    "_id": f"{org_id}#{generation}",
                    "org_id": org_id,
                    "generation": generation,
                    "secret": secret,
                    "made_at": _stored_time(now),
                }
            )
        except DuplicateKeyError:
            raise SecretRotationRaced(
                "another rotation of the webhook secret happened at the same time: "
                "GET /webhooks/secret shows the current secret"
            ) from None
        return secret


@dataclass(frozen=True, slots=True)
class _SecretVersion:
    generation: int
    secret: str
    made_at: datetime | None  # None: the first secret, made before rotations existed


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def _secret_versions(org_id: str) -> list[_SecretVersion]:
    """The organisation's secrets, oldest first: generation 0 (`_id` = the organisation, as
    the first secret has always been stored), then one document per rotation."""
    raws = await _secrets().find({"$or": [{"_id": org_id}, {"org_id": org_id}]}).to_list()
    versions = [
        _SecretVersion(
            generation=int(raw.get("generation", 0)),
            secret=str(raw["secret"]),
            made_at=_utc(raw.get("made_at")),
        )
        for raw in raws
    ]
    return sorted(versions, key=lambda v: v.generation)


async def _first_secret(org_id: str) -> str:
    """Make the organisation's first secret (generation 0) and return the stored one.

    Made by an insert (`_id` = the organisation): of two gateways asking first at once, one
    insert wins and both return its secret. A conditional update would not do on FerretDB
    1.24, which could let both "win" and sign with different secrets.
    """
    oid = _object_id(org_id, what="organisation")
    if await OrganizationDocument.get_pymongo_collection().find_one({"_id": oid}) is None:
        raise NotFound(f"no organisation {org_id!r}")
    try:
        await _secrets().insert_one({"_id": org_id, "secret": _new_secret()})
    except DuplicateKeyError:
        pass  # another gateway made it first: its secret is the one
    stored = await _secrets().find_one({"_id": org_id})
    if stored is None:
        raise StorageError(f"webhook secret of {org_id!r} vanished while being made")
    return str(stored["secret"])
