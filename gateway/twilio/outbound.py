"""Placing a Twilio call for a stored outbound call: inline TwiML connects the callee's
audio to the media stream endpoint with a stream token bound to the call's id (the
CallSid comes later), and every progress event goes to `/twilio/status?call_id=`."""

from __future__ import annotations

import time

from gateway.services import Services
from storage import CallRecord
from telephony.twilio import connect_stream_twiml, issue_stream_token, stream_url_for


def outbound_token_subject(call_id: str) -> str:
    """What an outbound call's stream token is bound to: our call id (the CallSid comes later)."""
    return "call:" + call_id


async def dial_twilio(services: Services, call: CallRecord, *, machine_detection: bool) -> str:
    """Ask Twilio to place `call`; returns its CallSid (`CarrierError` if Twilio refuses)."""
    settings, rest = services.settings, services.twilio.rest
    assert rest is not None
    ring_s = settings.outbound_ring_timeout_s
    token = issue_stream_token(
        services.twilio.stream_token_key,
        call_id=call.id,
        subject=outbound_token_subject(call.id),
        now=time.time(),
        ttl_s=ring_s + settings.stream_token_ttl_s,
    )
    twiml = connect_stream_twiml(
        stream_url_for(settings.public_url), {"call_id": call.id, "token": token}
    )
    return await rest.create_call(
        to=call.to_number,
        from_=call.from_number,
        twiml=twiml,
        status_callback=settings.public_url_for(f"/twilio/status?call_id={call.id}"),
        ring_timeout_s=ring_s,
        machine_detection=machine_detection,
    )
