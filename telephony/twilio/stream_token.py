"""Short-lived per-call tokens: the `<Stream>` carries one as a `<Parameter>`, and the stream's
`start` must present it, so nobody can open a stream for a call the gateway did not answer.

A token is `<expires>.<nonce>.<mac>`: an HMAC-SHA256 over our call id, the carrier's subject
(the CallSid, or what an outbound call is bound to before it has one), the expiry and a
random nonce. It proves who issued it and for which call, until when; that it is used
once is the gateway's part (a claim in the database, see `gateway.twilio.stream_claim`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from telephony.errors import SignatureError


@dataclass(frozen=True, slots=True)
class StreamToken:
    """A verified token: what it was issued for, until when, and its nonce (for logs)."""

    call_id: str
    subject: str
    expires: int  # seconds since the epoch
    nonce: str


def _mac(secret: bytes, call_id: str, subject: str, expires: int, nonce: str) -> bytes:
    # Length-prefixed, so no two (call id, subject) pairs sign the same text.
    text = f"stream|{len(call_id)}:{call_id}|{len(subject)}:{subject}|{expires}|{nonce}"
    return hmac.new(secret, text.encode(), hashlib.sha256).digest()


def issue_stream_token(
    secret: bytes, *, call_id: str, subject: str, now: float, ttl_s: float
) -> str:
    """A token for our call `call_id` and the carrier's `subject`, valid until `now + ttl_s`
    (seconds since the epoch)."""
    expires = int(now + ttl_s)
    nonce = secrets.token_urlsafe(12)
    mac = _mac(secret, call_id, subject, expires, nonce)
    return f"{expires}.{nonce}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def verify_stream_token(
    secret: bytes, token: str, *, call_id: str, subject: str, now: float
) -> StreamToken:
    """The token, if it was issued for `call_id` and `subject` and has not expired; else
    `SignatureError`."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureError("malformed stream token")
    expires_text, nonce, mac_text = parts
    try:
        expires = int(expires_text)
        mac = base64.urlsafe_b64decode((mac_text + "=" * (-len(mac_text) % 4)).encode())
    except ValueError as exc:
        raise SignatureError("malformed stream token") from exc
    if not nonce or not hmac.compare_digest(mac, _mac(secret, call_id, subject, expires, nonce)):
        raise SignatureError("stream token does not match this call")
    if now > expires:
        raise SignatureError("stream token expired")
    return StreamToken(call_id=call_id, subject=subject, expires=expires, nonce=nonce)
