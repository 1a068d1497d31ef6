"""Signing end-call webhooks: HMAC-SHA256 over `timestamp.body` with the organisation's
secret, sent as `X-Webhook-Signature: v1=<hex>` beside `X-Webhook-Timestamp`."""

from __future__ import annotations

import hashlib
import hmac

from webhooks.errors import SignatureMismatch

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
ID_HEADER = "X-Webhook-Id"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value of `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str, *, timestamp: str, body: bytes, signature: str, now: float, tolerance_s: int = 300
) -> None:
    """What a receiver does: check the signature, and that the timestamp is recent."""
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise SignatureMismatch("timestamp is not an integer") from exc
    if abs(now - sent_at) > tolerance_s:
        raise SignatureMismatch("timestamp outside the tolerance (a replay?)")
    if not hmac.compare_digest(sign(secret, sent_at, body), signature):
        raise SignatureMismatch("signature does not match")
