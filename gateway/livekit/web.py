"""Web calls: a browser talks to an assistant through a LiveKit room. The gateway creates
the call's room, joins it as the agent (the same `LiveKitRoom` and lifecycle as a SIP
call), and mints the browser a short-lived token that lets only the call's caller identity
join only that room. The call ends as no-answer if the browser never comes."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.livekit.room import room_of, web_caller_identity
from gateway.services import Services
from storage import CallRecord, CallStatus
from telephony.errors import LiveKitError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebCallRoom:
    """Where and how the browser joins: LiveKit's URL for browsers, the room, its token."""

    livekit_url: str
    room: str
    token: str
    identity: str


async def open_web_room(services: Services, call: CallRecord) -> WebCallRoom:
    """Create the stored web call's room, have the agent join it, and mint the browser's
    token. `LiveKitError` if LiveKit refuses the room: the call is then finished `failed`."""
    livekit, rooms, url = services.livekit, services.rooms, services.settings.livekit_browser_url()
    assert livekit is not None and rooms is not None and url is not None
    room_name = room_of(call)
    identity = web_caller_identity(call)
    try:
        await livekit.create_room(room_name)
    except LiveKitError:
        await services.database.calls.finish_call(
            call.id,
            status=CallStatus.FAILED,
            end_reason="livekit-error",
            ended_at=datetime.now(UTC),
        )
        with contextlib.suppress(LiveKitError):
            await livekit.delete_room(room_name)
        services.outbox.poke()  # its report goes out now, not at the next poll
        raise
    rooms.serve(room_name, call, web_caller=identity)  # the agent waits for the browser
    token = livekit.caller_token(room_name, identity, ttl_s=services.settings.web_call_token_ttl_s)
    log.info("web call room ready", extra={"room": room_name, "call_id": call.id})
    return WebCallRoom(livekit_url=url, room=room_name, token=token, identity=identity)
