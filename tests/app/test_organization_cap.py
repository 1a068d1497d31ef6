"""The organisation's cap on live calls, in-process against the real database: inbound calls
count and are never refused for it (the inbound reserve is there so that callers get
through), and POST /call/outbound answers 429 + Retry-After once the live calls reach
max_concurrent_calls - inbound_reserved_calls."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from telephony.twilio import TwilioSignatureValidator
from tests.app import PUBLIC, TOKEN, app_client

KEY = "test-api-key-0c2d4e6f8a1b3c5d"


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    with app_client(
        mongo_url,
        api_key=KEY,
        max_loop_lag_ms=10_000,
        admission_retry_after_s=7,
        twilio_account_sid="AC" + "2" * 32,
        twilio_api_base_url="http://127.0.0.1:9",  # never reached: refused before dialling
    ) as test_client:
        yield test_client


def _voice(client: TestClient, call_sid: str) -> ET.Element:
    form = {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15551230000",
        "To": "+15559870000",
    }
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + "/twilio/voice", form)
    answer = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200, answer.text
    return ET.fromstring(answer.text)


def _outbound(client: TestClient) -> Any:
    return client.post(
        "/call/outbound",
        headers={"x-api-key": KEY},
        json={"assistant_id": "nope", "to_number": "+15558880002", "from_number": "+15557770001"},
    )


def test_inbound_calls_count_are_never_refused_and_outbound_waits(client: TestClient) -> None:
    h = {"x-api-key": KEY}
    capped = client.patch(
        "/organization", json={"max_concurrent_calls": 2, "inbound_reserved_calls": 1}, headers=h
    )
    assert capped.status_code == 200, capped.text
    assert _outbound(client).status_code == 404  # room: it goes on (to the unknown assistant)

    assert _voice(client, "CA" + uuid.uuid4().hex).find("./Connect/Stream") is not None
    refused = _outbound(client)  # 1 live inbound call = 2 - 1 reserved: no outbound room
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "organization_at_capacity"
    assert refused.headers["Retry-After"] == "7"

    # At and over the whole cap, callers still get through.
    for _ in range(2):
        assert _voice(client, "CA" + uuid.uuid4().hex).find("./Connect/Stream") is not None
    assert _outbound(client).status_code == 429

    uncapped = client.patch("/organization", json={"max_concurrent_calls": None}, headers=h)
    assert uncapped.status_code == 200, uncapped.text
    assert _outbound(client).status_code == 404
