"""`POST /livekit/webhook`: LiveKit's signed room events. A SIP participant joining a room
starts an inbound call; a room finishing ends the call it holds; an egress ending
completes its call's recording. An event about nothing of ours is still answered 200:
LiveKit retries non-2xx answers."""

from __future__ import annotations

import logging

from livekit.protocol import models
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import NotConfigured
from gateway.livekit.egress import record_egress_ended
from gateway.services import Services
from telephony.livekit import verified_event

log = logging.getLogger(__name__)


async def livekit_webhook(request: Request) -> Response:
    services: Services = request.app.state.services
    livekit, rooms = services.livekit, services.rooms
    if livekit is None or rooms is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    event = verified_event(
        livekit.token_verifier(), await request.body(), request.headers.get("authorization", "")
    )
    room = event.room.name
    log.info("livekit event", extra={"event": event.event, "room": room})
    if event.event == "participant_joined" and event.participant.kind == models.ParticipantInfo.SIP:
        await rooms.serve_inbound(room, dict(event.participant.attributes))
    elif event.event == "room_finished":
        rooms.end(room, "room-finished")
    elif event.event == "egress_ended":
        await record_egress_ended(services.database.calls, event.egress_info)
    return JSONResponse({"ok": True})
