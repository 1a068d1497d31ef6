"""Calls through the API: pages of calls, one call with its transcript and recording link,
placing an outbound call (stored first, then dialled by its carrier), and running a
finished call's analysis again."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel

from gateway.api.models import (
    AnalysisOut,
    CallDetail,
    CallList,
    CallOut,
    CallQuery,
    OutboundCallOut,
    OutboundCallRequest,
)
from gateway.api.operations import ApiRequest, Operation
from gateway.call.outbound import OutboundDial, place_call
from gateway.errors import ConflictError
from storage import CallFilter, CallNotFound, CallStatus

log = logging.getLogger(__name__)


async def list_calls(req: ApiRequest) -> BaseModel:
    q = req.query_as(CallQuery)
    page = await req.services.database.calls.list_calls(
        CallFilter(
            org_id=req.principal.org_id,
            assistant_id=q.assistant_id,
            status=q.status,
            direction=q.direction,
            started_after=q.started_after,
            started_before=q.started_before,
        ),
        limit=q.limit,
        cursor=q.cursor or None,  # an empty cursor is the first page
    )
    currency = req.services.calls.prices.currency
    total = sum(
        (c.cost.total for c in page.items if c.cost is not None and c.cost.currency == currency),
        Decimal(0),
    )
    return CallList(
        items=[CallOut.of(c) for c in page.items],
        next_cursor=page.next_cursor,
        total_cost=total,
        currency=currency,
    )


async def get_call(req: ApiRequest) -> BaseModel:
    call_id = req.path["call_id"]
    call = await req.services.database.calls.get_call(call_id)
    if call.org_id != req.principal.org_id:
        raise CallNotFound(f"no call {call_id!r}")
    recordings = req.services.recordings
    link = None
    if call.recording is not None and recordings is not None:
        link = recordings.url(call.recording)
    return CallDetail.of(call, recording_url=link)


async def analyze_call(req: ApiRequest) -> BaseModel:
    """Owe the finished call's analysis again, per its assistant's plan as it is now: any
    gateway's analyst runs it (this one is poked); the answer is the pending state."""
    call_id = req.path["call_id"]
    db = req.services.database
    call = await db.calls.get_call(call_id, with_turns=False)
    if call.org_id != req.principal.org_id:
        raise CallNotFound(f"no call {call_id!r}")
    if call.ended_at is None:
        raise ConflictError("the call has not ended: it is analysed once it has")
    pending = await db.analyses.request_analysis(call_id, now=datetime.now(UTC))
    req.services.analyst.poke(call_id)
    return AnalysisOut.of(pending)


async def place_outbound_call(req: ApiRequest) -> BaseModel:
    """Store the call (`queued`, its persona filled), then ask its carrier to dial
    (`gateway.call.outbound`, the campaigns' path too). A carrier refusal
    (`carrier-refused`) or an unreachable carrier (`carrier-unreachable`) finishes the
    stored call as `failed`, so nothing dangles, and its report is owed. The caller id
    (`from_number`, or the trunk's first number) must be the organisation's: 422
    otherwise. A gateway with no room for the call answers 503 with Retry-After before
    anything is read or stored (`GatewayFull`); an organisation whose live calls are at its
    cap less its inbound reserve answers 429 with Retry-After (`OrganizationAtCapacity`);
    an admitted Twilio call holds its place while it rings (its final status, or its
    stream starting here, frees it)."""
    settings = req.services.settings
    key = "outbound-" + secrets.token_hex(8)
    hold_s = settings.outbound_ring_timeout_s + settings.admission_hold_s
    admission = req.services.admission
    body = req.body_as(OutboundCallRequest)  # parsed already: this reads nothing
    weight = admission.room_weight if body.call_service == "livekit" else 1
    admission.require(
        key,
        hold_s=hold_s,
        arrival="outbound",
        retry_after_s=settings.admission_retry_after_s,
        weight=weight,
    )
    try:
        placed = await place_call(
            req.services,
            OutboundDial(
                org_id=req.principal.org_id,
                assistant_id=body.assistant_id,
                to_number=body.to_number,
                call_service=body.call_service,
                from_number=body.from_number,
                trunk_id=body.trunk_id,
                metadata=body.metadata,
                machine_detection=body.machine_detection,
            ),
            hold_s=hold_s,
        )
    finally:
        admission.release(key)  # the call holds its own place from here (or needs none)
    return OutboundCallOut(
        call_id=placed.call_id,
        status=CallStatus.QUEUED,
        call_service=placed.call_service,
        call_sid=placed.call_sid,
        room_name=placed.room_name,
    )


OPERATIONS = [
    Operation(
        "GET", "/calls", list_calls, "List calls, newest first", "calls",
        response=CallList, query=CallQuery, errors=(401, 422),
    ),
    Operation(
        "GET", "/calls/{call_id}", get_call, "A call with its transcript and metrics", "calls",
        response=CallDetail, errors=(401, 404),
    ),
    Operation(
        "POST", "/calls/{call_id}/analyze", analyze_call,
        "Run a finished call's analysis again (answered before it runs)", "calls",
        response=AnalysisOut, status=202, errors=(401, 404, 409),
    ),
    Operation(
        "POST", "/call/outbound", place_outbound_call,
        "Place an outbound call from an assistant", "calls",
        body=OutboundCallRequest, response=OutboundCallOut, status=201,
        errors=(401, 404, 422, 429, 502, 503),
    ),
]  # fmt: skip
