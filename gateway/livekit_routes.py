"""`POST /livekit/webhook`: LiveKit's signed room events (JWT in `Authorization` whose
`sha256` claim covers the body). A SIP participant joining a room starts an inbound call;
a room finishing ends the call it holds; an egress ending completes its call's recording.
An event about nothing of ours is still answered 200: LiveKit retries non-2xx answers."""

from __future__ import annotations

import base64
import hashlib
import logging

import jwt
from google.protobuf.json_format import ParseError
from livekit import api
from livekit.protocol import models
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.context import GatewayContext
from gateway.errors import NotConfigured
from gateway.livekit_egress import record_egress_ended
from telephony.errors import SignatureError

log = logging.getLogger(__name__)


def verified_event(verifier: api.TokenVerifier, body: bytes, auth: str) -> api.WebhookEvent:
    """The webhook event, after its token and body hash checked out; `SignatureError` if not."""
    if auth.lower().startswith("bearer "):
        auth = auth[7:]
    if not auth:
        raise SignatureError("missing LiveKit webhook token")
    try:
        claims = verifier.verify(auth)
    except (jwt.PyJWTError, ValueError) as exc:
        raise SignatureError(f"invalid LiveKit webhook token: {exc}") from exc
    if not claims.sha256 or base64.b64decode(claims.sha256) != hashlib.sha256(body).digest():
        raise SignatureError("LiveKit webhook body does not match its token")
    try:
        return api.WebhookReceiver(verifier).receive(body.decode(), auth)
    except ParseError as exc:
        raise SignatureError(f"malformed LiveKit webhook: {exc}") from exc


async def livekit_webhook(request: Request) -> Response:
    ctx: GatewayContext = request.app.state.gateway
    if ctx.livekit is None or ctx.livekit_calls is None:
        raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
    event = verified_event(
        ctx.livekit.token_verifier(), await request.body(), request.headers.get("authorization", "")
    )
    room = event.room.name
    log.info("livekit event", extra={"event": event.event, "room": room})
    if event.event == "participant_joined" and event.participant.kind == models.ParticipantInfo.SIP:
        await ctx.livekit_calls.serve_inbound(room, dict(event.participant.attributes))
    elif event.event == "room_finished":
        ctx.livekit_calls.end(room, "room-finished")
    elif event.event == "egress_ended":
        await record_egress_ended(ctx.store, event.egress_info)
    return JSONResponse({"ok": True})
