"""Placing a Twilio call for a stored outbound call: inline TwiML connects the callee's
audio to the media stream endpoint with a stream token bound to the call's id (the
CallSid comes later), and every progress event goes to `/twilio/status?call_id=`.

A call whose assistant has a voicemail plan (or that asked for machine detection) is
placed with Twilio's asynchronous answering-machine detection, its verdict sent to
`/twilio/amd?call_id=`: `DetectMessageEnd` when a message is to be left (the verdict comes
once the machine's greeting ended, the beep), `Enable` otherwise (at once)."""

from __future__ import annotations

import time

from gateway.services import Services
from storage import CallRecord, VoicemailPlan
from telephony.twilio import (
    MachineDetection,
    connect_stream_twiml,
    issue_stream_token,
    stream_url_for,
)


def outbound_token_subject(call_id: str) -> str:
    """What an outbound call's stream token is bound to: our call id (the CallSid comes later)."""
    return "call:" + call_id


def machine_detection_for(
    services: Services, call: CallRecord, plan: VoicemailPlan | None, *, asked: bool
) -> MachineDetection | None:
    """The answering-machine detection to place `call` with (None: none)."""
    if plan is None and not asked:
        return None
    leaves_message = plan is not None and plan.action == "leave_message"
    settings = services.settings
    return MachineDetection(
        mode="DetectMessageEnd" if leaves_message else "Enable",
        callback_url=settings.public_url_for(f"/twilio/amd?call_id={call.id}"),
        timeout_s=settings.twilio_amd_timeout_s,
    )


async def dial_twilio(services: Services, call: CallRecord, *, machine_detection: bool) -> str:
    """Ask Twilio to place `call`; returns its CallSid (`CarrierError` if Twilio refuses).
    Its assistant's voicemail plan (read here) asks for machine detection too."""
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
    assistant = None
    if call.assistant_id is not None:
        assistant = await services.database.assistants.get_any(call.assistant_id)
    plan = assistant.config.voicemail if assistant is not None else None
    return await rest.create_call(
        to=call.to_number,
        from_=call.from_number,
        twiml=twiml,
        status_callback=settings.public_url_for(f"/twilio/status?call_id={call.id}"),
        ring_timeout_s=ring_s,
        machine_detection=machine_detection_for(services, call, plan, asked=machine_detection),
    )
