"""`POST /livekit/webhook`: LiveKit's signed room events. A SIP participant joining a room
starts an inbound call; its caller leaving, or the room finishing, ends the call it holds;
an egress ending completes its call's recording. An event about nothing of ours is still
answered 200: LiveKit retries non-2xx answers; an event the gateway does nothing with
(`room_started`, `track_published`, a participant other than a SIP caller joining) is
answered 200 at once, unclaimed.

Before any of that: the body is capped by `BodySizeLimit` (`LIVEKIT_MAX_BODY_BYTES` on this
path: 413 beyond, signed or not), the token in `Authorization` is verified from the header
alone, and only then is the body read, hashed against the token, and parsed. Each event
is acted on once across every gateway on the database: its id is claimed first, and a
delivery whose id was claimed before is answered 200 and logged.

A SIP caller's `participant_joined` that this process has no room for (admission,
`gateway/call/admission.py`) is left for another gateway: it is not claimed (or its claim
is given back, if the process filled up meanwhile) and the webhook is answered 503 with
`Retry-After: 1`. LiveKit's webhook client retries a 5xx a few
times (go-retryablehttp's default: 4 retries), and a balancer in front of several gateways
may hand a retry to one with room. Under `serve --workers N` the refusing worker also offers
the same signed request on its own port again every 0.5 s, each time on a new connection
that the kernel may give to any worker, until one takes it (`OFFERED_HEADER` marks these,
so a full worker refuses them without counting the call again). Nothing is stored for it
then (another gateway may still take the call). After LIVEKIT_DISPATCH_GRACE_S the refusing
gateway tries to claim the event itself: if no gateway took the call, it serves it if it
has room by then, else stores it busy/gateway-full and closes the room, so the caller is
hung up rather than left in a silent room (`LiveKitRooms.dispatch_refused`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import httpx
from livekit import api
from livekit.protocol import models
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayFull, NotConfigured
from gateway.livekit.egress import record_egress_ended
from gateway.livekit.room import Handoff, LiveKitRooms
from gateway.services import Services
from gateway.settings import Settings
from telephony.livekit import verified_event, verified_webhook_token

log = logging.getLogger(__name__)

# Marks a refused dispatch that a worker offers again on its own port (`_handoff`).
OFFERED_HEADER = "x-voice-gateway-offered"
# How long an offer may take: the worker that takes it answers once the call is opened.
HANDOFF_TIMEOUT_S = 15.0


async def livekit_webhook(request: Request) -> Response:
    services: Services = request.app.state.services
    livekit, rooms = services.livekit, services.rooms
    if livekit is None or rooms is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    token = verified_webhook_token(
        livekit.token_verifier(), request.headers.get("authorization", ""), now=time.time()
    )
    event = verified_event(token, await request.body())  # capped by `BodySizeLimit`
    extra = {"event": event.event, "event_id": event.id, "room": event.room.name}
    if not _acted_on(event):
        # room_started, track_published, the agent's own joining...: nothing to do, so
        # nothing to claim (each claim is a database write while the rooms are joining).
        return _answered()
    if event.event == "participant_joined" and event.participant.kind == models.ParticipantInfo.SIP:
        # A new call while draining: 503, retried by the balancer (or LiveKit) elsewhere.
        services.draining.refuse_new_call()
    if not event.id:
        log.warning("livekit event without an id ignored", extra=extra)
        return _answered()
    keep_until = datetime.fromtimestamp(token.valid_until, UTC)
    offered = OFFERED_HEADER in request.headers
    handoff = None
    if event.event == "participant_joined" and event.participant.kind == models.ParticipantInfo.SIP:
        # A full gateway leaves the dispatch unclaimed, for a retry elsewhere (503).
        if not offered:
            handoff = _handoff(services.settings, await request.body(), request.headers)
        attributes = dict(event.participant.attributes)
        rooms.admit_dispatch(
            event.id,
            event.room.name,
            attributes,
            keep_until=keep_until,
            handoff=handoff,
            offered=offered,
        )
    claims = services.database.claims
    fresh = await claims.claim_event(
        event.id,
        event=event.event,
        now=datetime.now(UTC),
        keep_until=keep_until,
    )
    if not fresh:
        log.warning("webhook event already handled: %s", event.id, extra=extra)
        return _answered()
    log.info("livekit event", extra=extra)
    try:
        await _act(services, rooms, event)
    except Exception as exc:  # given back so LiveKit's retry is acted on, then answered as usual
        await claims.release_event(event.id)
        if isinstance(exc, GatewayFull):  # full by the time it was opened: as above
            attributes = dict(event.participant.attributes)
            rooms.dispatch_refused(
                event.id, event.room.name, attributes, keep_until=keep_until, handoff=handoff
            )
        raise
    return _answered()


def _handoff(settings: Settings, body: bytes, headers: Mapping[str, str]) -> Handoff | None:
    """Under `serve --workers N` (a worker has an index), a refused dispatch's request as it
    came, sent again to this gateway's port for another worker to take; None otherwise."""
    if settings.worker_index is None:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/livekit/webhook"
    sent = {
        "authorization": headers.get("authorization", ""),
        "content-type": headers.get("content-type", "application/webhook+json"),
        OFFERED_HEADER: str(settings.worker_index),
    }

    async def offer() -> bool:
        # A client of its own each time: a new connection, which any worker may accept; to
        # this port directly (no proxy from the environment) over plain HTTP (no CA bundle).
        client = httpx.AsyncClient(timeout=HANDOFF_TIMEOUT_S, trust_env=False, verify=False)
        try:
            async with client as http:
                answer = await http.post(url, content=body, headers=sent)
        except httpx.HTTPError as exc:  # refused, reset, slow: offered again
            log.debug("offering a refused dispatch failed: %r", exc)
            return False
        return answer.status_code == 200

    return offer


def _answered() -> Response:
    """200, closing the connection: LiveKit's webhook client keeps one connection alive, so
    every room would land on the worker that took its first webhook; each event on a new
    connection is handed by the kernel to any of the workers on the port."""
    return JSONResponse({"ok": True}, headers={"Connection": "close"})


def _acted_on(event: api.WebhookEvent) -> bool:
    """Whether `_act` does anything with `event`."""
    if event.event == "participant_joined":
        return bool(event.participant.kind == models.ParticipantInfo.SIP)
    return event.event in ("participant_left", "room_finished", "egress_ended")


async def _act(services: Services, rooms: LiveKitRooms, event: api.WebhookEvent) -> None:
    room = event.room.name
    if event.event == "participant_joined" and event.participant.kind == models.ParticipantInfo.SIP:
        await rooms.serve_inbound(room, dict(event.participant.attributes))
    elif event.event == "participant_left":
        rooms.participant_left(room, event.participant.identity)
    elif event.event == "room_finished":
        rooms.end(room, "room-finished")
    elif event.event == "egress_ended":
        await record_egress_ended(
            services.database.calls, event.egress_info, events=services.events
        )
