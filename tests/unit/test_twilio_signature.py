"""X-Twilio-Signature, TwiML and per-call stream tokens."""

import xml.etree.ElementTree as ET

import pytest

from telephony.errors import SignatureError
from telephony.twilio import (
    TwilioSignatureValidator,
    connect_stream_twiml,
    issue_stream_token,
    stream_url_for,
    verify_stream_token,
)

# The example of Twilio's "Webhooks security" documentation.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_known_vector_from_twilio_docs() -> None:
    validator = TwilioSignatureValidator("12345")
    assert validator.sign(DOC_URL, DOC_PARAMS) == DOC_SIGNATURE
    validator.check(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_missing_wrong_or_tampered_signatures_are_refused() -> None:
    validator = TwilioSignatureValidator("12345")
    with pytest.raises(SignatureError, match="missing"):
        validator.check(DOC_URL, DOC_PARAMS, None)
    with pytest.raises(SignatureError):
        validator.check(DOC_URL, DOC_PARAMS, "AAAA")
    with pytest.raises(SignatureError):
        validator.check(DOC_URL, {**DOC_PARAMS, "Digits": "9"}, DOC_SIGNATURE)
    with pytest.raises(SignatureError):
        TwilioSignatureValidator("other").check(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_websocket_upgrade_is_signed_over_the_wss_url() -> None:
    validator = TwilioSignatureValidator("token")
    url = stream_url_for("https://gw.example.com")
    assert url == "wss://gw.example.com/twilio/stream"
    signature = validator.sign(url, {})
    validator.check(url, {}, signature)
    with pytest.raises(SignatureError):
        validator.check("https://gw.example.com/twilio/stream", {}, signature)


def test_stream_url_scheme_mapping() -> None:
    assert stream_url_for("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/twilio/stream"
    assert stream_url_for("https://x.io/base/") == "wss://x.io/base/twilio/stream"
    with pytest.raises(ValueError):
        stream_url_for("ftp://x.io")


def test_connect_stream_twiml() -> None:
    xml = connect_stream_twiml(
        "wss://gw.example.com/twilio/stream", {"call_id": "abc", "note": 'a&b<"c">'}
    )
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    stream = ET.fromstring(xml).find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib["url"] == "wss://gw.example.com/twilio/stream"
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert params == {"call_id": "abc", "note": 'a&b<"c">'}
    with pytest.raises(ValueError, match="query"):
        connect_stream_twiml("wss://gw.example.com/twilio/stream?token=x", {})


def test_stream_tokens_bind_call_and_expire() -> None:
    secret = b"s" * 32
    token = issue_stream_token(secret, call_id="c1", subject="CA1", now=1000.0, ttl_s=30)
    verified = verify_stream_token(secret, token, call_id="c1", subject="CA1", now=1029.0)
    assert (verified.call_id, verified.subject, verified.expires) == ("c1", "CA1", 1030)
    with pytest.raises(SignatureError, match="expired"):
        verify_stream_token(secret, token, call_id="c1", subject="CA1", now=1031.0)
    # Bound to our call id and to the carrier's subject, both.
    with pytest.raises(SignatureError, match="match"):
        verify_stream_token(secret, token, call_id="c1", subject="CA2", now=1001.0)
    with pytest.raises(SignatureError, match="match"):
        verify_stream_token(secret, token, call_id="c2", subject="CA1", now=1001.0)
    with pytest.raises(SignatureError, match="match"):
        verify_stream_token(b"t" * 32, token, call_id="c1", subject="CA1", now=1001.0)


def test_stream_token_format() -> None:
    secret = b"s" * 32
    token = issue_stream_token(secret, call_id="c1", subject="CA1", now=1000.0, ttl_s=30)
    expires, nonce, mac = token.split(".")
    assert expires == "1030" and len(nonce) == 16
    assert len(mac) == 43 and "=" not in mac  # SHA-256, unpadded URL-safe base64
    # Each token has its own nonce (logs name it; the MAC covers it).
    again = issue_stream_token(secret, call_id="c1", subject="CA1", now=1000.0, ttl_s=30)
    assert again.split(".")[1] != nonce
    verified = verify_stream_token(secret, token, call_id="c1", subject="CA1", now=1001.0)
    assert verified.nonce == nonce
    # No part can be changed: a later expiry, another nonce.
    for forged in (f"2030.{nonce}.{mac}", f"1030.{again.split('.')[1]}.{mac}"):
        with pytest.raises(SignatureError, match="match"):
            verify_stream_token(secret, forged, call_id="c1", subject="CA1", now=1001.0)
    # The text signed is length-prefixed: moving the boundary between call id and subject
    # does not keep the MAC.
    split = issue_stream_token(secret, call_id="a|b", subject="c", now=1000.0, ttl_s=30)
    with pytest.raises(SignatureError, match="match"):
        verify_stream_token(secret, split, call_id="a", subject="b|c", now=1001.0)
    for garbage in ("", "abc", "x.y", "1.!!", "1..abc", "x.n.abc", "1.n.!!", "1.n.a.b"):
        with pytest.raises(SignatureError):
            verify_stream_token(secret, garbage, call_id="c1", subject="CA1", now=1001.0)
