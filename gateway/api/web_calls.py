"""Web calls through the API: `POST /web-calls` stores a browser's call to an assistant
(transport `web`, inbound: the browser calls the agent), has the agent join the call's
LiveKit room, and answers what the browser joins it with (`gateway.livekit.web`)."""

from __future__ import annotations

import secrets

from pydantic import BaseModel

from gateway.api.models import WebCallOut, WebCallRequest
from gateway.api.operations import ApiRequest, Operation
from gateway.call.records import CallInputLimits, open_call
from gateway.errors import NotConfigured
from gateway.livekit.web import open_web_room
from gateway.logs import call_id_var
from storage import Direction

WEB_TRANSPORT = "web"


async def place_web_call(req: ApiRequest) -> BaseModel:
    """Store the call (`ringing` until the browser's audio arrives; its persona filled from
    `metadata` as an outbound call's is, with empty numbers: a browser has none), then open
    its room. The browser must join within WEB_CALL_TOKEN_TTL_S, else the call ends
    `no-answer`. Another organisation's assistant is 404, as an unknown one. A gateway
    with no room for the call answers 503 with Retry-After first (`GatewayFull`)."""
    services, body = req.services, req.body_as(WebCallRequest)
    services.draining.refuse_new_call()  # 503: a balancer retries it on another gateway
    if services.rooms is None or services.livekit is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    settings, key = services.settings, "web-" + secrets.token_hex(8)
    services.admission.require(
        key,
        hold_s=settings.admission_hold_s,
        arrival="web",
        retry_after_s=settings.admission_retry_after_s,
        weight=services.admission.room_weight,
    )
    try:
        return await _place_web_call(req, body)
    finally:
        services.admission.release(key)  # its room holds the call from here


async def _place_web_call(req: ApiRequest, body: WebCallRequest) -> BaseModel:
    services = req.services
    db = services.database
    assistant = await db.assistants.get(req.principal.org_id, body.assistant_id)
    call = await open_call(
        db.calls,
        db.accounts,
        assistant=assistant,
        transport=WEB_TRANSPORT,
        direction=Direction.INBOUND,
        from_number="",
        to_number="",
        metadata=body.metadata,
        limits=CallInputLimits.of(services.settings),
    )
    call_id_var.set(call.id)
    room = await open_web_room(services, call)
    return WebCallOut(
        call_id=call.id, livekit_url=room.livekit_url, token=room.token, room=room.room
    )


OPERATIONS = [
    Operation(
        "POST", "/web-calls", place_web_call,
        "Call an assistant from a browser (a LiveKit room and a caller token)", "calls",
        body=WebCallRequest, response=WebCallOut, status=201,
        errors=(401, 404, 422, 502, 503),
    ),
]  # fmt: skip
