"""Short-lived per-call tokens: the `<Stream>` carries one as a `<Parameter>`, and the stream's
`start` must present it, so nobody can open a stream for a call the gateway did not answer."""

from __future__ import annotations

import base64
import hashlib
import hmac

from telephony.errors import SignatureError


def _mac(secret: bytes, call_sid: str, expires: int) -> bytes:
    return hmac.new(secret, f"{call_sid}|{expires}".encode(), hashlib.sha256).digest()


def issue_stream_token(secret: bytes, call_sid: str, *, now: float, ttl_s: float = 120.0) -> str:
    """A token for `call_sid` valid until `now + ttl_s` (seconds since the epoch)."""
    expires = int(now + ttl_s)
    mac = base64.urlsafe_b64encode(_mac(secret, call_sid, expires)).decode().rstrip("=")
    return f"{expires}.{mac}"


def verify_stream_token(secret: bytes, token: str, call_sid: str, *, now: float) -> None:
    """Raise `SignatureError` unless `token` was issued for `call_sid` and has not expired."""
    expires_text, _, mac_text = token.partition(".")
    try:
        expires = int(expires_text)
        padded = mac_text + "=" * (-len(mac_text) % 4)
        mac = base64.urlsafe_b64decode(padded.encode())
    except ValueError as exc:
        raise SignatureError("malformed stream token") from exc
    if not hmac.compare_digest(mac, _mac(secret, call_sid, expires)):
        raise SignatureError("stream token does not match this call")
    if now > expires:
        raise SignatureError("stream token expired")
