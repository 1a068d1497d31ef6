"""Admission at the HTTP edge, in-process against the real database: an admitted Twilio
call holds its place until its stream starts or its final status comes; a call beyond
MAX_LIVE_CALLS gets the operator's OVERFLOW_TWIML and is stored busy/gateway-full; an
outbound request is 503 with Retry-After before anything is read."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from telephony.twilio import TwilioSignatureValidator
from tests.app import PUBLIC, TOKEN, app_client

KEY = "test-api-key-7c1f9a2e4b6d8035"
OVERFLOW = "<Response><Dial>+15550009999</Dial></Response>"


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    with app_client(
        mongo_url,
        api_key=KEY,
        max_live_calls=1,
        max_loop_lag_ms=10_000,  # this test is about the bound on calls
        overflow_twiml=OVERFLOW,
        admission_retry_after_s=9,
        twilio_account_sid="AC" + "2" * 32,
        twilio_api_base_url="http://127.0.0.1:9",  # never reached: refused before dialling
    ) as test_client:
        yield test_client


def _signed_post(client: TestClient, path: str, form: dict[str, str]) -> Any:
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature})


def _voice(client: TestClient, call_sid: str) -> ET.Element:
    form = {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15551230000",
        "To": "+15559870000",
    }
    answer = _signed_post(client, "/twilio/voice", form)
    assert answer.status_code == 200, answer.text
    return ET.fromstring(answer.text)


def test_a_held_place_refuses_the_next_call_until_the_first_ends(client: TestClient) -> None:
    first, second, third = ("CA" + uuid.uuid4().hex for _ in range(3))
    assert _voice(client, first).find("./Connect/Stream") is not None  # admitted: held

    overflow = _voice(client, second)  # the operator's overflow TwiML, stored busy
    assert ET.tostring(overflow, encoding="unicode") == OVERFLOW
    calls = client.get("/calls", headers={"x-api-key": KEY}).json()["items"]
    [refused] = [c for c in calls if c["call_sid"] == second]
    assert (refused["status"], refused["end_reason"]) == ("busy", "gateway-full")
    assert refused["direction"] == "inbound" and refused["ended_at"]

    outbound = client.post(
        "/call/outbound",
        headers={"x-api-key": KEY},
        json={"assistant_id": "nope", "to_number": "+15558880002", "from_number": "+15557770001"},
    )
    assert outbound.status_code == 503
    assert outbound.headers["retry-after"] == "9"
    assert outbound.json()["error"]["code"] == "gateway_full"

    # The first caller hung up before its stream started: its place is free again.
    done = {"CallSid": first, "CallStatus": "completed", "AccountSid": "AC" + "1" * 32}
    assert _signed_post(client, "/twilio/status", done).status_code == 204
    assert _voice(client, third).find("./Connect/Stream") is not None

    metrics = client.get("/metrics").text
    assert 'voice_gateway_calls_refused_total{arrival="twilio",cause="live-calls"} 1' in metrics
    assert 'voice_gateway_calls_refused_total{arrival="outbound",cause="live-calls"} 1' in metrics
