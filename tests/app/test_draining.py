"""A draining gateway through Starlette's test client, against the real database: /ready
answers 503 `draining` and /health stays 200; every request that would start a call is
refused with 503 + Retry-After (a balancer retries it elsewhere); what belongs to calls
already known is served as before."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.app import drain
from telephony.twilio import TwilioSignatureValidator
from tests.app import PUBLIC, TOKEN, app_client

KEY = "test-api-key-7c1f9a2e4b6d8035"


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    with app_client(
        mongo_url,
        api_key=KEY,
    ) as test_client:
        yield test_client


def _voice(client: TestClient, call_sid: str):  # type: ignore[no-untyped-def]
    form = {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15551230000",
        "To": "+15559870000",
    }
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + "/twilio/voice", form)
    return client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})


def _refused_as_draining(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "draining"


def test_a_draining_gateway_is_not_ready_and_takes_no_new_call(client: TestClient) -> None:
    known_sid = "CA" + uuid.uuid4().hex
    answered = _voice(client, known_sid)  # a call taken before the drain
    assert answered.status_code == 200 and "<Stream" in answered.text

    assert client.portal is not None and isinstance(client.app, Starlette)
    client.portal.call(drain, client.app)  # no live call here: it returns at once

    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
    assert ready.json() == {"status": "draining", "live_calls": 0}
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "draining", "database": "ok"}

    _refused_as_draining(_voice(client, "CA" + uuid.uuid4().hex))
    headers = {"x-api-key": KEY}
    outbound = {"assistant_id": "a" * 24, "to_number": "+15551230000"}
    _refused_as_draining(client.post("/call/outbound", json=outbound, headers=headers))
    _refused_as_draining(
        client.post("/web-calls", json={"assistant_id": "a" * 24}, headers=headers)
    )

    # What is already known is served: the known call's webhook again (its stream has not
    # started) is answered as before, and the API reads on.
    again = _voice(client, known_sid)
    assert again.status_code == 200
    assert ET.fromstring(again.text).find("./Connect/Stream") is not None
    listed = client.get("/calls", headers=headers)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 1
