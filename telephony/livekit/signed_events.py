"""LiveKit's webhook events, verified: the `Authorization` JWT is signed with the project's
key and its `sha256` claim covers the body. Nothing else of a request is trusted.

Order of calls: `verified_webhook_token()` on the header alone, before a byte of the body
is read; then `verified_event()` hashes the body against the token and only then parses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import jwt
from google.protobuf.json_format import Parse, ParseError
from livekit import api

from telephony.errors import SignatureError

# livekit-server signs each webhook with a token valid five minutes; one valid for longer
# than this is refused, so the gateway need remember the events it acted on no longer.
MAX_TOKEN_LIFETIME_S = 24 * 3600
# `api.TokenVerifier` accepts a token up to a minute past its expiry (its default leeway);
# an event's claim is kept twice that long past expiry, so while any gateway (clocks up to
# a minute apart) accepts the token, no other gateway's clock has pruned the claim.
_PAST_EXPIRY_S = 120.0


@dataclass(frozen=True, slots=True)
class WebhookToken:
    """A verified webhook token: the body's SHA-256 it vouches for, and until when it may be
    presented (its expiry and the verifier's leeway; seconds since the epoch)."""

    sha256: bytes
    valid_until: float


def verified_webhook_token(verifier: api.TokenVerifier, auth: str, *, now: float) -> WebhookToken:
    """The `Authorization` header's token, verified; `SignatureError` if it is not LiveKit's."""
    if auth.lower().startswith("bearer "):
        auth = auth[7:]
    if not auth:
        raise SignatureError("missing LiveKit webhook token")
    try:
        claims = verifier.verify(auth)
        # Verified above: this reads the expiry of a token known to be LiveKit's.
        expires = float(jwt.decode(auth, options={"verify_signature": False})["exp"])
        digest = base64.b64decode(claims.sha256 or "", validate=True)
    except (jwt.PyJWTError, ValueError, KeyError, binascii.Error) as exc:
        raise SignatureError(f"invalid LiveKit webhook token: {exc}") from exc
    if not digest:
        raise SignatureError("LiveKit webhook token has no body hash")
    if expires - now > MAX_TOKEN_LIFETIME_S:
        raise SignatureError("LiveKit webhook token is valid for too long")
    return WebhookToken(sha256=digest, valid_until=expires + _PAST_EXPIRY_S)


def verified_event(token: WebhookToken, body: bytes) -> api.WebhookEvent:
    """The webhook event, once `body` is the one `token` vouches for; `SignatureError` if not."""
    if hashlib.sha256(body).digest() != token.sha256:
        raise SignatureError("LiveKit webhook body does not match its token")
    try:
        return Parse(body.decode(), api.WebhookEvent(), ignore_unknown_fields=True)
    except (ParseError, UnicodeDecodeError) as exc:
        raise SignatureError(f"malformed LiveKit webhook: {exc}") from exc
