"""`POST /call/outbound`: place a call from an assistant, through Twilio or a LiveKit trunk.

The call is stored first (status `queued`, prompt and greeting filled), then the carrier
is asked to dial. Its id returns at once; the carrier's callbacks move the status on.
A carrier refusal finishes the stored call as `failed`, so nothing dangles.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from gateway.api_models import OutboundCallOut, OutboundCallRequest
from gateway.errors import CarrierError, NotConfigured
from gateway.livekit_sip import LiveKitError
from gateway.logs import call_id_var
from gateway.openapi import ApiRequest, Operation, RequestInvalid
from gateway.persona import Persona
from storage import AssistantRecord, CallRecord, CallStatus, Direction, NewCall, SipTrunkRecord
from telephony.twilio import connect_stream_twiml, issue_stream_token, stream_url_for

log = logging.getLogger(__name__)


def outbound_token_subject(call_id: str) -> str:
    """What an outbound call's stream token is bound to: our call id (the CallSid comes later)."""
    return "call:" + call_id


def _persona(assistant: AssistantRecord, body: OutboundCallRequest, from_number: str) -> Persona:
    values = {"to_number": body.to_number, "from_number": from_number, **body.metadata}
    return Persona.for_call(
        system_prompt=assistant.config.system_prompt,
        greeting=assistant.config.greeting,
        values=values,
    )


async def _store_call(
    req: ApiRequest,
    *,
    assistant: AssistantRecord,
    body: OutboundCallRequest,
    transport: str,
    from_number: str,
) -> CallRecord:
    persona = _persona(assistant, body, from_number)
    return await req.ctx.store.create_call(
        NewCall(
            org_id=req.principal.org_id,
            transport=transport,
            call_sid="",
            from_number=from_number,
            to_number=body.to_number,
            direction=Direction.OUTBOUND,
            assistant_id=assistant.id,
            metadata=body.metadata,
            status=CallStatus.QUEUED,
            system_prompt=persona.system_prompt,
            greeting=persona.greeting,
        ),
        started_at=datetime.now(UTC),
    )


async def _failed(req: ApiRequest, call: CallRecord, reason: str) -> None:
    await req.ctx.store.finish_call(
        call.id, status=CallStatus.FAILED, end_reason=reason, ended_at=datetime.now(UTC)
    )


async def _via_twilio(
    req: ApiRequest, assistant: AssistantRecord, body: OutboundCallRequest
) -> OutboundCallOut:
    ctx = req.ctx
    if ctx.twilio_calls is None:
        raise NotConfigured("Twilio REST is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)")
    if body.from_number is None:
        raise RequestInvalid("from_number is required for call_service=twilio")
    call = await _store_call(
        req, assistant=assistant, body=body, transport="twilio", from_number=body.from_number
    )
    call_id_var.set(call.id)
    ring_s = ctx.settings.outbound_ring_timeout_s
    token = issue_stream_token(
        ctx.stream_token_secret,
        outbound_token_subject(call.id),
        now=time.time(),
        ttl_s=ring_s + ctx.settings.stream_token_ttl_s,
    )
    twiml = connect_stream_twiml(
        stream_url_for(ctx.settings.public_url), {"call_id": call.id, "token": token}
    )
    try:
        sid = await ctx.twilio_calls.create_call(
            to=body.to_number,
            from_=body.from_number,
            twiml=twiml,
            status_callback=ctx.settings.public_url_for(f"/twilio/status?call_id={call.id}"),
            ring_timeout_s=ring_s,
            machine_detection=body.machine_detection,
        )
    except CarrierError:
        await _failed(req, call, "carrier-refused")
        raise
    await ctx.store.set_call_sid(call.id, sid)
    return OutboundCallOut(
        call_id=call.id, status=CallStatus.QUEUED, call_service="twilio", call_sid=sid
    )


async def _outbound_trunk(req: ApiRequest, trunk_id: str | None) -> SipTrunkRecord:
    if trunk_id is not None:
        return await req.ctx.sip.trunk(req.principal.org_id, trunk_id, "outbound")
    trunks = await req.ctx.sip.trunks(req.principal.org_id, "outbound")
    if len(trunks) != 1:
        raise RequestInvalid(
            "trunk_id is required: the organisation has "
            f"{len(trunks)} outbound trunks" + ("" if trunks else " (create one first)")
        )
    return trunks[0]


async def _via_livekit(
    req: ApiRequest, assistant: AssistantRecord, body: OutboundCallRequest
) -> OutboundCallOut:
    livekit = req.ctx.livekit
    if livekit is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    trunk = await _outbound_trunk(req, body.trunk_id)
    from_number = body.from_number or trunk.numbers[0]
    call = await _store_call(
        req, assistant=assistant, body=body, transport="livekit", from_number=from_number
    )
    call_id_var.set(call.id)
    room = f"call-{call.id}"
    room_call = None
    try:
        await livekit.create_room(room)
        if req.ctx.livekit_calls is not None:
            # The agent is in the room before the callee's phone rings.
            room_call = req.ctx.livekit_calls.serve(room, call)
        dialled = await livekit.dial(
            trunk_id=trunk.livekit_id,
            to_number=body.to_number,
            from_number=from_number,
            room_name=room,
            identity=f"sip-{call.id}",
            attributes={"voice_gateway.call_id": call.id},
            ring_timeout_s=req.ctx.settings.outbound_ring_timeout_s,
        )
    except LiveKitError as exc:
        await _failed(req, call, "sip-dial-failed")
        if room_call is not None:
            room_call.request_end("sip-dial-failed", CallStatus.FAILED)
        else:
            with contextlib.suppress(LiveKitError):
                await livekit.delete_room(room)
        raise CarrierError(str(exc), carrier="livekit", status=exc.status) from exc
    sid = dialled.sip_call_id or dialled.participant_id
    await req.ctx.store.set_call_sid(call.id, sid)
    return OutboundCallOut(
        call_id=call.id,
        status=CallStatus.QUEUED,
        call_service="livekit",
        call_sid=sid,
        room_name=room,
    )


async def place_outbound_call(req: ApiRequest) -> BaseModel:
    body = req.body_as(OutboundCallRequest)
    assistant = await req.ctx.assistants.get(req.principal.org_id, body.assistant_id)
    if body.call_service == "twilio":
        return await _via_twilio(req, assistant, body)
    return await _via_livekit(req, assistant, body)


OPERATIONS = [
    Operation(
        "POST",
        "/call/outbound",
        place_outbound_call,
        "Place an outbound call from an assistant",
        "calls",
        body=OutboundCallRequest,
        response=OutboundCallOut,
        status=201,
        errors=(401, 404, 422, 502, 503),
    )
]
