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
from gateway.api.numbers import require_registered
from gateway.api.operations import ApiRequest, Operation
from gateway.call.records import CallInputLimits, open_call
from gateway.errors import ConflictError, NotConfigured, RequestInvalid
from gateway.livekit.outbound import dial_livekit
from gateway.livekit.room import room_of
from gateway.logs import call_id_var
from gateway.twilio.outbound import dial_twilio
from storage import CallFilter, CallNotFound, CallStatus, Direction, SipTrunkRecord
from telephony.errors import CarrierError, CarrierUnavailable

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


async def _outbound_trunk(req: ApiRequest, trunk_id: str | None) -> SipTrunkRecord:
    sip, org_id = req.services.database.sip, req.principal.org_id
    if trunk_id is not None:
        return await sip.trunk(org_id, trunk_id, "outbound")
    trunks = await sip.trunks(org_id, "outbound")
    if len(trunks) != 1:
        raise RequestInvalid(
            "trunk_id is required: the organisation has "
            f"{len(trunks)} outbound trunks" + ("" if trunks else " (create one first)")
        )
    return trunks[0]


async def place_outbound_call(req: ApiRequest) -> BaseModel:
    """Store the call (`queued`, its persona filled), then ask its carrier to dial. A
    carrier refusal (`carrier-refused`) or an unreachable carrier (`carrier-unreachable`)
    finishes the stored call as `failed`, so nothing dangles, and its report is owed. The
    caller id (`from_number`, or the trunk's first number) must be the organisation's: 422
    otherwise. A gateway with no room for the call answers 503 with Retry-After before
    anything is read or stored (`GatewayFull`); an admitted Twilio call holds its place
    while it rings (its final status, or its stream starting here, frees it)."""
    settings = req.services.settings
    key = "outbound-" + secrets.token_hex(8)
    hold_s = settings.outbound_ring_timeout_s + settings.admission_hold_s
    admission = req.services.admission
    admission.require(
        key, hold_s=hold_s, arrival="outbound", retry_after_s=settings.admission_retry_after_s
    )
    try:
        return await _place_outbound_call(req, hold_s)
    finally:
        admission.release(key)  # the call holds its own place from here (or needs none)


async def _place_outbound_call(req: ApiRequest, hold_s: float) -> BaseModel:
    services, body = req.services, req.body_as(OutboundCallRequest)
    services.draining.refuse_new_call()  # 503: a balancer retries it on another gateway
    db = services.database
    assistant = await db.assistants.get(req.principal.org_id, body.assistant_id)
    trunk = None
    if body.call_service == "twilio":
        if services.twilio.rest is None:
            raise NotConfigured(
                "Twilio REST is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)"
            )
        if body.from_number is None:
            raise RequestInvalid("from_number is required for call_service=twilio")
        from_number = body.from_number
    else:
        if services.rooms is None:
            raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
        trunk = await _outbound_trunk(req, body.trunk_id)
        from_number = body.from_number or trunk.numbers[0]
    await require_registered(db, req.principal.org_id, from_number, field="from_number")
    call = await open_call(
        db.calls,
        db.accounts,
        assistant=assistant,
        transport=body.call_service,
        direction=Direction.OUTBOUND,
        from_number=from_number,
        to_number=body.to_number,
        metadata=body.metadata,
        status=CallStatus.QUEUED,
        limits=CallInputLimits.of(services.settings),
    )
    call_id_var.set(call.id)
    if trunk is None:
        try:
            sid = await dial_twilio(services, call, machine_detection=body.machine_detection)
        except CarrierError as exc:
            unreachable = isinstance(exc, CarrierUnavailable)
            await db.calls.finish_call(
                call.id,
                status=CallStatus.FAILED,
                end_reason="carrier-unreachable" if unreachable else "carrier-refused",
                ended_at=datetime.now(UTC),
            )
            services.outbox.poke()  # its report goes out now, not at the next poll
            raise
        services.admission.admit_held(call.id, hold_s=hold_s)  # until its stream starts
        room_name = None
    else:
        sid = await dial_livekit(services, call, trunk)
        room_name = room_of(call)
    await db.calls.set_call_sid(call.id, sid)
    return OutboundCallOut(
        call_id=call.id,
        status=CallStatus.QUEUED,
        call_service=body.call_service,
        call_sid=sid,
        room_name=room_name,
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
        errors=(401, 404, 422, 502, 503),
    ),
]  # fmt: skip
