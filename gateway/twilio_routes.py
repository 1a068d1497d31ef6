"""Twilio's HTTP webhooks: `POST /twilio/voice` answers with TwiML, `POST /twilio/status`
records call progress. Both verify `X-Twilio-Signature` over the public URL."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from twilio.twiml.voice_response import VoiceResponse

from gateway.context import GatewayContext
from gateway.logs import call_id_var
from gateway.openapi import error_response
from gateway.persona import MissingPlaceholders, Persona
from storage import CallNotFound, CallRecord, CallStatus, Direction, NewCall
from telephony.twilio import connect_stream_twiml, issue_stream_token, stream_url_for

log = logging.getLogger(__name__)

# Twilio's CallStatus values, as its status callbacks send them ("initiated" is queued).
_STATUSES = {s.value: s for s in CallStatus} | {"initiated": CallStatus.QUEUED}


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


async def _new_inbound_call(ctx: GatewayContext, form: dict[str, str]) -> CallRecord | Response:
    """Store a new inbound call for the assistant its number reaches (or the default one)."""
    to_number, from_number = form.get("To", ""), form.get("From", "")
    assistant = await ctx.assistants.for_number(to_number)
    if assistant is not None:
        org_id: str | None = assistant.org_id
        try:
            persona: Persona | None = Persona.for_call(
                system_prompt=assistant.config.system_prompt,
                greeting=assistant.config.greeting,
                values={"from_number": from_number, "to_number": to_number},
            )
        except MissingPlaceholders as exc:
            log.error("assistant cannot answer: %s", exc, extra={"assistant_id": assistant.id})
            return _unavailable_twiml()
    else:
        default_org = await ctx.accounts.default_organization()
        org_id = default_org.id if default_org else None
        persona = None
    direction = (
        Direction.INBOUND if form.get("Direction", "inbound") == "inbound" else (Direction.OUTBOUND)
    )
    return await ctx.store.create_call(
        NewCall(
            org_id=org_id,
            transport="twilio",
            call_sid=form.get("CallSid", ""),
            from_number=from_number,
            to_number=to_number,
            direction=direction,
            assistant_id=assistant.id if assistant else None,
            system_prompt=persona.system_prompt if persona else None,
            greeting=persona.greeting if persona else None,
        ),
        started_at=datetime.now(UTC),
    )


def _unavailable_twiml() -> Response:
    """What a caller hears when the number's assistant cannot run (it is logged above)."""
    response = VoiceResponse()
    response.say("Sorry, this number cannot take calls right now. Goodbye.")
    response.hangup()
    return Response(str(response), media_type="application/xml")


async def twilio_voice(request: Request) -> Response:
    """Answer a call: store it, then connect its audio to our Media Streams endpoint."""
    ctx: GatewayContext = request.app.state.gateway
    form = await _verified_form(request)
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return error_response(400, "invalid_request", "CallSid is required")
    call = await ctx.store.get_call_by_sid(call_sid)
    if call is None:
        created = await _new_inbound_call(ctx, form)
        if isinstance(created, Response):
            return created
        call = created
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


async def _status_target(
    ctx: GatewayContext, call_id: str | None, call_sid: str
) -> CallRecord | None:
    """The call a status callback is about: by our id (outbound calls carry it), else by sid."""
    if call_id:
        try:
            call = await ctx.store.get_call(call_id, with_turns=False)
        except CallNotFound:
            return None
        # The signature proves Twilio sent it; the sid check keeps it to its own call.
        if call.call_sid and call.call_sid != call_sid:
            log.warning("status callback names another call", extra={"call_sid": call_sid})
            return None
        if not call.call_sid:
            await ctx.store.set_call_sid(call.id, call_sid)
        return call
    return await ctx.store.get_call_by_sid(call_sid)


async def twilio_status(request: Request) -> Response:
    """Record a status callback (queued, ringing, in-progress, completed, busy, no-answer...)."""
    ctx: GatewayContext = request.app.state.gateway
    form = await _verified_form(request)
    call = await _status_target(ctx, request.query_params.get("call_id"), form.get("CallSid", ""))
    status = _STATUSES.get(form.get("CallStatus", ""))
    if call is None or status is None:
        log.info("status callback ignored", extra={"call_sid": form.get("CallSid")})
        return Response(status_code=204)
    call_id_var.set(call.id)
    if form.get("AnsweredBy"):
        await ctx.store.set_answered_by(call.id, form["AnsweredBy"])
    log.info("call status", extra={"status": status.value, "call_sid": call.call_sid})
    if status in (CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS):
        await ctx.store.set_status(call.id, status)
    else:
        await ctx.store.finish_call(
            call.id, status=status, end_reason=f"twilio-{status.value}", ended_at=datetime.now(UTC)
        )
    return Response(status_code=204)
