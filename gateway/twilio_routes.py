"""Twilio's HTTP webhooks: `POST /twilio/voice` answers with TwiML, `POST /twilio/status`
records call progress. Both verify `X-Twilio-Signature` over the public URL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.context import GatewayContext
from gateway.logs import call_id_var
from storage import CallStatus, Direction, NewCall
from telephony.twilio import connect_stream_twiml, issue_stream_token, stream_url_for

log = logging.getLogger(__name__)

# Twilio's CallStatus values, as its status callbacks send them.
_STATUSES = {s.value: s for s in CallStatus}


async def _verified_form(request: Request) -> dict[str, str]:
    """The form fields of a Twilio webhook, after its signature checked out."""
    ctx: GatewayContext = request.app.state.gateway
    form = await request.form()
    params = {k: v for k, v in form.items() if isinstance(v, str)}
    url = ctx.settings.public_url_for(request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    ctx.twilio_validator.check(url, params, request.headers.get("x-twilio-signature"))
    return params


async def twilio_voice(request: Request) -> Response:
    """Answer a call: store it, then connect its audio to our Media Streams endpoint."""
    ctx: GatewayContext = request.app.state.gateway
    form = await _verified_form(request)
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return JSONResponse(
            {"error": {"code": "invalid_request", "message": "CallSid is required"}},
            status_code=400,
        )
    existing = await ctx.store.get_call_by_sid(call_sid)
    if existing is None:
        direction = (
            Direction.INBOUND
            if form.get("Direction", "inbound") == "inbound"
            else (Direction.OUTBOUND)
        )
        call = await ctx.store.create_call(
            NewCall(
                transport="twilio",
                call_sid=call_sid,
                from_number=form.get("From", ""),
                to_number=form.get("To", ""),
                direction=direction,
            ),
            started_at=datetime.now(UTC),
        )
    else:
        call = existing
    call_id_var.set(call.id)
    token = issue_stream_token(
        ctx.stream_token_secret, call_sid, now=time.time(), ttl_s=ctx.settings.stream_token_ttl_s
    )
    twiml = connect_stream_twiml(
        stream_url_for(ctx.settings.public_url),
        {"call_id": call.id, "token": token, "from": call.from_number, "to": call.to_number},
    )
    log.info("call answered", extra={"call_sid": call_sid, "from": call.from_number})
    return Response(twiml, media_type="application/xml")


async def twilio_status(request: Request) -> Response:
    """Record a status callback (ringing, in-progress, completed, busy, no-answer, ...)."""
    ctx: GatewayContext = request.app.state.gateway
    form = await _verified_form(request)
    call = await ctx.store.get_call_by_sid(form.get("CallSid", ""))
    status = _STATUSES.get(form.get("CallStatus", ""))
    if call is None or status is None:
        log.info("status callback ignored", extra={"call_sid": form.get("CallSid")})
        return Response(status_code=204)
    call_id_var.set(call.id)
    if status in (CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS):
        await ctx.store.set_status(call.id, status)
    else:
        await ctx.store.finish_call(
            call.id, status=status, end_reason=f"twilio-{status.value}", ended_at=datetime.now(UTC)
        )
    return Response(status_code=204)
