"""Calls' post-call analyses: the owed ones, their claims, results and re-runs.

The write that finishes a call sets `analysis_pending` (`storage.calls`), so an analysis is
owed from that moment, durably, like the end-call report. Whichever gateway runs it first
claims it by generation (`storage.claims.take_next_token`: FerretDB 1.24 has no atomic
conditional update, its one atomic check-and-set is an insert whose `_id` is taken):

- claim: read the owed call at generation g whose lease (`analysis_until`) is not running,
  insert token `<call id>#<g+1>` with a lease, then write g+1 and the lease on the call.
  Exactly one gateway gets g+1; once that lease has passed, the next gateway takes g+2
  (a token whose writer died before writing the call is skipped once its lease passed).
- store: the holder of g inserts token g+1 ("done") before writing the result; if another
  gateway claimed it after the lease expired, or a re-run superseded it, that insert fails
  and the stale holder writes nothing.
- published: the flag is cleared only at the generation the result was stored at, so a
  re-run asked for meanwhile stays owed.
- re-run (`POST /calls/{id}/analyze`): takes the next generation too, so a run under way
  cannot overwrite the newer request with its older answer.

Every write is by `_id` (FerretDB answers it without a scan); only finding the owed calls
reads the collection, which the worker does when poked and otherwise seldom.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.call_index import OWED_ANALYSES, CallIndex, update_if
from storage.calls import (
    ANALYSIS_PENDING,
    _call_record,
    _driver_errors,
    _object_id,
    _stored_time,
    _utc,
    call_write_lock,
)
from storage.claims import ANALYSIS_CLAIMS, take_next_token, take_token, token
from storage.documents import CallDocument
from storage.errors import CallNotFound, StorageError
from storage.models import CallAnalysis, CallRecord

# A token outlives its lease by this much before `prune_expired` may delete it.
_TOKEN_KEEP = timedelta(days=1)
_RETRIES = 3  # re-runs racing a claim or a store try again this often


@dataclass(frozen=True, slots=True)
class AnalysisClaim:
    """A call's analysis held by `owner` at generation `gen` until `until`."""

    call_id: str
    gen: int
    owner: str
    until: datetime


def _token_fields(until: datetime) -> dict[str, Any]:
    return {"expires_at": until + _TOKEN_KEEP}


def _stored_analysis(analysis: CallAnalysis) -> dict[str, Any]:
    """The analysis as stored: its data as JSON text (see `storage.calls._analysis`)."""
    fields = analysis.model_dump(exclude={"data"})
    if analysis.data is not None:
        fields["data_json"] = json.dumps(analysis.data, ensure_ascii=False)
    if analysis.completed_at is not None:
        fields["completed_at"] = _stored_time(analysis.completed_at)
    return fields


class AnalysisRepository:
    """Owed analyses, claimed and stored by generation (see the module's docstring)."""

    @_driver_errors
    async def owed_analyses(self, limit: int = 100) -> list[str]:
        """Ids of finished calls whose analysis is owed (read from their rows:
        `storage.call_index`), but not those stored already whose report is still to be
        queued: `call.analyzed` waits for it, and the outbox publishes them once it is."""
        docs = await CallIndex().flagged(
            OWED_ANALYSES,
            lambda d: (
                d.analysis_pending
                and (not d.report_pending or (d.analysis or {}).get("status") == "pending")
            ),
            limit=limit,
            now=datetime.now(UTC),
        )
        return [str(doc.id) for doc in docs]

    @_driver_errors
    async def claim_analysis(
        self, call_id: str, *, owner: str, now: datetime, lease_s: float
    ) -> AnalysisClaim | None:
        """Take the call's owed analysis for `lease_s`: None if it is not owed (any more) or
        another gateway holds it."""
        oid = _object_id(call_id, what="call")
        calls = CallDocument.get_pymongo_collection()
        doc = await calls.find_one(
            {"_id": oid}, {"analysis_pending": 1, "analysis_gen": 1, "analysis_until": 1}
        )
        if doc is None or not doc.get("analysis_pending"):
            return None
        now = _stored_time(now)
        held_until = _utc(doc.get("analysis_until"))
        if held_until is not None and held_until >= now:
            return None  # claimed, and its lease runs
        until = _stored_time(now + timedelta(seconds=lease_s))
        gen = await take_next_token(
            ANALYSIS_CLAIMS, call_id, int(doc.get("analysis_gen", 0)), owner=owner,
            kind="claim", now=now, until=until, fields=_token_fields(until),
        )  # fmt: skip
        if gen is None:
            return None
        async with call_write_lock(call_id):
            await calls.update_one(
                {"_id": oid}, {"$set": {"analysis_gen": gen, "analysis_until": until}}
            )
        fresh = await calls.find_one({"_id": oid}, {"analysis_pending": 1})
        if fresh is None or not fresh.get("analysis_pending"):
            return None  # published meanwhile by the writer of the generation before
        return AnalysisClaim(call_id=call_id, gen=gen, owner=owner, until=until)

    @_driver_errors
    async def store_analysis(
        self, claim: AnalysisClaim, analysis: CallAnalysis, *, now: datetime
    ) -> CallRecord | None:
        """Store the result while `claim` still holds the analysis: the call as stored (no
        turns), or None (and nothing written) when a re-run or another gateway took it."""
        held = await token(ANALYSIS_CLAIMS, claim.call_id, claim.gen)
        if held is None or held["owner"] != claim.owner:
            return None
        now = _stored_time(now)
        until = max(claim.until, now + timedelta(seconds=60))
        done = claim.gen + 1
        if not await take_token(
            ANALYSIS_CLAIMS, claim.call_id, done, owner=claim.owner, kind="done", now=now,
            until=until, fields=_token_fields(until),
        ):  # fmt: skip
            return None
        oid = _object_id(claim.call_id, what="call")
        calls = CallDocument.get_pymongo_collection()
        async with call_write_lock(claim.call_id):
            await calls.update_one(
                {"_id": oid},
                {
                    "$set": {
                        "analysis": _stored_analysis(analysis),
                        "analysis_gen": done,
                        "analysis_until": None,
                    }
                },
            )
        doc = await CallDocument.get(oid)
        if doc is None:
            raise CallNotFound(f"no call {claim.call_id!r}")
        return _call_record(doc)

    @_driver_errors
    async def analysis_published(self, call_id: str, *, gen: int) -> None:
        """The result stored at generation `gen` has been published: it is owed no more,
        unless a re-run took a later generation meanwhile."""
        async with call_write_lock(call_id):
            await update_if(
                CallDocument.get_pymongo_collection(),
                _object_id(call_id, what="call"),
                {"analysis_gen": gen},
                {"analysis_pending": False},
            )

    @_driver_errors
    async def request_analysis(self, call_id: str, *, now: datetime) -> CallAnalysis:
        """Owe the call's analysis again (pending), superseding any run under way; the
        pending state. `CallNotFound` when there is no such call."""
        oid = _object_id(call_id, what="call")
        calls = CallDocument.get_pymongo_collection()
        now = _stored_time(now)
        for _ in range(_RETRIES):
            doc = await calls.find_one({"_id": oid}, {"analysis_gen": 1})
            if doc is None:
                raise CallNotFound(f"no call {call_id!r}")
            until = now + timedelta(seconds=60)
            # `until` is for a re-run that dies before its write below: then it is skipped.
            gen = await take_next_token(
                ANALYSIS_CLAIMS, call_id, int(doc.get("analysis_gen", 0)), owner="api",
                kind="rerun", now=now, until=now, fields=_token_fields(until),
            )  # fmt: skip
            if gen is None:  # a gateway claimed or stored it meanwhile: look again
                await asyncio.sleep(0.05)
                continue
            await CallIndex().mark(OWED_ANALYSES, call_id, at=now)
            async with call_write_lock(call_id):
                await calls.update_one(
                    {"_id": oid},
                    {
                        "$set": {
                            "analysis": ANALYSIS_PENDING,
                            "analysis_pending": True,
                            "analysis_gen": gen,
                            "analysis_until": None,
                        }
                    },
                )
            return CallAnalysis.model_validate(ANALYSIS_PENDING)
        raise StorageError(f"the analysis of call {call_id!r} kept changing; try again")
