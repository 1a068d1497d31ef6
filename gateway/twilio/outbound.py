"""Placing a Twilio call for a stored outbound call: inline TwiML connects the callee's
audio to the media stream endpoint with a stream token bound to the call's id (the
CallSid comes later), and every progress event goes to `/twilio/status?call_id=`.

A call whose assistant has a voicemail plan is placed with Twilio's asynchronous
answering-machine detection, its verdict sent to `/twilio/amd?call_id=` (the call's
voicemail gate waits for it): `DetectMessageEnd` when a message is to be left (the verdict
comes once the machine's greeting ended, the beep), `Enable` otherwise (at once). A call
that only asked for machine detection (`machine_detection`, no voicemail plan) keeps
Twilio's synchronous `Enable`: the TwiML (the stream, the agent's greeting) waits for the
verdict, which comes as `AnsweredBy` on the `in-progress` status callback; nothing screens
the call."""

from __future__ import annotations

import time

from gateway.services import Services
from gateway.settings import Settings
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
    settings: Settings, call_id: str, plan: VoicemailPlan | None, *, asked: bool
) -> MachineDetection | None:
    """The answering-machine detection to place call `call_id` with (None: none): see the
    module docstring."""
    if plan is None:
        if not asked:
            return None
        return MachineDetection(mode="Enable", timeout_s=settings.twilio_amd_timeout_s)
    return MachineDetection(
        mode="DetectMessageEnd" if plan.action == "leave_message" else "Enable",
        callback_url=settings.public_url_for(f"/twilio/amd?call_id={call_id}"),
        timeout_s=settings.twilio_amd_timeout_s,
    )


async def dial_twilio(
    services: Services,
    call: CallRecord,
    *,
    machine_detection: bool,
    voicemail: VoicemailPlan | None,
) -> str:
    """Ask Twilio to place `call`; returns its CallSid (`CarrierError` if Twilio refuses).
    `voicemail`: its assistant's plan (the caller holds the assistant; nothing is read from
    the database here, so nothing but the carrier can fail once the call is stored)."""
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
        machine_detection=machine_detection_for(
            settings, call.id, voicemail, asked=machine_detection
        ),
    )
