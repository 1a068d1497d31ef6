"""Signing end-call webhooks: HMAC-SHA256 over `timestamp.body` with the organisation's
secret, sent as `X-Webhook-Signature: v1=<hex>` beside `X-Webhook-Timestamp`.

While a rotated-out secret is in its grace period the header carries one signature per
valid secret, current first, comma-separated as Stripe does (`v1=<new>,v1=<old>`): a
receiver accepts the request when any `v1` entry matches the secret it holds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from webhooks.errors import SignatureMismatch

SIGNATURE_HEADER = "X-Webhook-Signature"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
ID_HEADER = "X-Webhook-Id"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature of `body` sent at `timestamp` (Unix seconds) with one secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """The signature header value: one `v1=` entry per secret, in the order given."""
    return ",".join(sign(secret, timestamp, body) for secret in secrets)


def verify(
    secret: str, *, timestamp: str, body: bytes, signature: str, now: float, tolerance_s: int = 300
) -> None:
    """What a receiver does: check that one of the header's signatures is `secret`'s, and
    that the timestamp is recent."""
    try:
        sent_at = int(timestamp)
    except ValueError as exc:
        raise SignatureMismatch("timestamp is not an integer") from exc
    if abs(now - sent_at) > tolerance_s:
        raise SignatureMismatch("timestamp outside the tolerance (a replay?)")
    expected = sign(secret, sent_at, body)
    # Every entry is compared (no early exit), so the time taken says nothing of which matched.
    matches = [hmac.compare_digest(expected, entry.strip()) for entry in signature.split(",")]
    if not any(matches):
        raise SignatureMismatch("signature does not match")
