"""Webhook signatures as a receiver checks them: `verify()`, and the README's snippet."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from webhooks.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureMismatch,
    sign,
    signature_header,
    verify,
)

SECRET = "whsec_test-secret"
BODY = b'{"id":"dlv_1","type":"call.ended","call":{"id":"c1","text":"caf\xc3\xa9"}}'
README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_receiver_verifies_a_good_signature() -> None:
    now = 1_700_000_000
    signature = sign(SECRET, now, BODY)
    assert re.fullmatch(r"v1=[0-9a-f]{64}", signature)
    verify(SECRET, timestamp=str(now), body=BODY, signature=signature, now=now + 299)


@pytest.mark.parametrize(
    ("secret", "body", "sent_at", "now", "why"),
    [
        (SECRET, BODY.replace(b"c1", b"c2"), 1_700_000_000, 1_700_000_000, "does not match"),
        ("whsec_other", BODY, 1_700_000_000, 1_700_000_000, "does not match"),
        (SECRET, BODY, 1_700_000_000, 1_700_000_301, "tolerance"),  # stale: a replay
        (SECRET, BODY, 1_700_000_000, 1_699_999_699, "tolerance"),  # from the future
    ],
)
def test_a_receiver_refuses(secret: str, body: bytes, sent_at: int, now: int, why: str) -> None:
    signature = sign(SECRET, sent_at, BODY)
    with pytest.raises(SignatureMismatch, match=why):
        verify(secret, timestamp=str(sent_at), body=body, signature=signature, now=now)


def test_the_timestamp_is_signed() -> None:
    signature = sign(SECRET, 1_700_000_000, BODY)
    with pytest.raises(SignatureMismatch, match="does not match"):
        verify(SECRET, timestamp="1700000001", body=BODY, signature=signature, now=1_700_000_001)
    with pytest.raises(SignatureMismatch, match="not an integer"):
        verify(SECRET, timestamp="soon", body=BODY, signature=signature, now=1_700_000_000)


def test_during_a_rotation_a_receiver_with_either_secret_verifies() -> None:
    now = 1_700_000_000
    header = signature_header(["whsec_new", "whsec_old"], now, BODY)
    assert re.fullmatch(r"v1=[0-9a-f]{64},v1=[0-9a-f]{64}", header)
    assert header.split(",") == [sign("whsec_new", now, BODY), sign("whsec_old", now, BODY)]
    for secret in ("whsec_new", "whsec_old"):
        verify(secret, timestamp=str(now), body=BODY, signature=header, now=now)
    with pytest.raises(SignatureMismatch, match="does not match"):
        verify(SECRET, timestamp=str(now), body=BODY, signature=header, now=now)
    assert signature_header([SECRET], now, BODY) == sign(SECRET, now, BODY)


def readme_receiver() -> Any:
    """The receiver code of the README section, executed as it is written there."""
    text = README.read_text()
    section = text[text.index("### How a receiver verifies the signature") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("\n```", start)]
    assert len([line for line in code.splitlines() if line.strip()]) == 7
    namespace: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace["verified"]


def test_the_readme_snippet_verifies_what_the_gateway_signs() -> None:
    verified = readme_receiver()
    now = int(time.time())
    headers = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: sign(SECRET, now, BODY)}
    assert verified(SECRET, headers, BODY) is True
    assert verified(SECRET, headers, BODY + b" ") is False
    assert verified("whsec_other", headers, BODY) is False
    stale = now - 301
    old = {TIMESTAMP_HEADER: str(stale), SIGNATURE_HEADER: sign(SECRET, stale, BODY)}
    assert verified(SECRET, old, BODY) is False
    # Mid-rotation the header carries the new and the old secret's signatures.
    both = signature_header(["whsec_new", SECRET], now, BODY)
    rotating = {TIMESTAMP_HEADER: str(now), SIGNATURE_HEADER: both}
    assert verified("whsec_new", rotating, BODY) is True
    assert verified(SECRET, rotating, BODY) is True
    assert verified("whsec_other", rotating, BODY) is False
    assert verified(SECRET, rotating, BODY + b" ") is False
