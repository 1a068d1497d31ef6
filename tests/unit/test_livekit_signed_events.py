"""LiveKit webhook verification: the token from the header alone, then the body's hash,
then the parse; how long a verified token may be presented."""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import timedelta

import pytest
from google.protobuf.json_format import MessageToJson
from livekit import api

from telephony.errors import SignatureError
from telephony.livekit import verified_event, verified_webhook_token

KEY, SECRET = "key", "s" * 32


def _token(body: bytes, *, ttl: timedelta = timedelta(minutes=5), secret: str = SECRET) -> str:
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return api.AccessToken(KEY, secret).with_sha256(digest).with_ttl(ttl).to_jwt()


def _body() -> bytes:
    event = api.WebhookEvent(event="room_finished", room=api.Room(name="call-1"), id="EV_1")
    return MessageToJson(event).encode()


def test_the_token_is_verified_then_the_body_then_parsed() -> None:
    verifier = api.TokenVerifier(KEY, SECRET)
    body, now = _body(), time.time()
    token = verified_webhook_token(verifier, "Bearer " + _token(body), now=now)
    assert token.sha256 == hashlib.sha256(body).digest()
    # Presentable until its expiry (five minutes) and the verifier's minute of leeway.
    assert now + 300 + 60 <= token.valid_until <= now + 300 + 180
    event = verified_event(token, body)
    assert (event.event, event.id, event.room.name) == ("room_finished", "EV_1", "call-1")
    with pytest.raises(SignatureError, match="does not match"):
        verified_event(token, body + b" ")


def test_tokens_that_are_not_livekits_are_refused_from_the_header() -> None:
    verifier, body, now = api.TokenVerifier(KEY, SECRET), _body(), time.time()
    for auth in ("", "Bearer ", "not-a-jwt", _token(body, secret="t" * 32)):
        with pytest.raises(SignatureError):
            verified_webhook_token(verifier, auth, now=now)
    no_hash = api.AccessToken(KEY, SECRET).to_jwt()
    with pytest.raises(SignatureError, match="body hash"):
        verified_webhook_token(verifier, no_hash, now=now)
    expired = _token(body, ttl=timedelta(minutes=-5))
    with pytest.raises(SignatureError, match="invalid"):
        verified_webhook_token(verifier, expired, now=now)
    # A token valid for days would make its event's id worth remembering for days.
    lasting = _token(body, ttl=timedelta(days=2))
    with pytest.raises(SignatureError, match="too long"):
        verified_webhook_token(verifier, lasting, now=now)


def test_a_verified_body_that_is_not_an_event_is_refused() -> None:
    verifier, now = api.TokenVerifier(KEY, SECRET), time.time()
    for body in (b"{not json", b"\xff\xfe", b'{"event": 7}'):
        token = verified_webhook_token(verifier, _token(body), now=now)
        with pytest.raises(SignatureError, match="malformed"):
            verified_event(token, body)
