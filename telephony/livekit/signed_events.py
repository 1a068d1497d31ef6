"""LiveKit's webhook events, verified: the `Authorization` JWT is signed with the project's
key and its `sha256` claim covers the body. Nothing else of a request is trusted."""

from __future__ import annotations

import base64
import hashlib

import jwt
from google.protobuf.json_format import ParseError
from livekit import api

from telephony.errors import SignatureError


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
