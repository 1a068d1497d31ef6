"""HTTP routes through Starlette's test client, against the real database."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

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


def _voice_form(call_sid: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15551230000",
        "To": "+15559870000",
    }


def _signed_post(client: TestClient, path: str, form: dict[str, str]):  # type: ignore[no-untyped-def]
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature})


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "database": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok"}


def test_voice_webhook_answers_twiml_that_connects_the_stream(client: TestClient) -> None:
    call_sid = "CA" + uuid.uuid4().hex
    response = _signed_post(client, "/twilio/voice", _voice_form(call_sid))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib["url"] == "wss://gw.example.com/twilio/stream"
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert set(params) >= {"call_id", "token"}
    assert params["from"] == "+15551230000"

    call = client.get(f"/calls/{params['call_id']}", headers={"x-api-key": KEY}).json()
    assert call["call_sid"] == call_sid
    assert call["direction"] == "inbound"
    assert call["transcript"] == []


def test_voice_webhook_refuses_bad_or_missing_signature(client: TestClient) -> None:
    form = _voice_form("CA" + uuid.uuid4().hex)
    missing = client.post("/twilio/voice", data=form)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "forbidden"
    wrong = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": "AAAA"})
    assert wrong.status_code == 403
    tampered = TwilioSignatureValidator(TOKEN).sign(PUBLIC + "/twilio/voice", form)
    form["From"] = "+15550000000"
    assert (
        client.post(
            "/twilio/voice", data=form, headers={"X-Twilio-Signature": tampered}
        ).status_code
        == 403
    )


def test_status_callback_moves_the_call_to_its_final_status(client: TestClient) -> None:
    call_sid = "CA" + uuid.uuid4().hex
    _signed_post(client, "/twilio/voice", _voice_form(call_sid))
    status = {**_voice_form(call_sid), "CallStatus": "no-answer"}
    assert _signed_post(client, "/twilio/status", status).status_code == 204
    assert client.post("/twilio/status", data=status).status_code == 403
    calls = client.get("/calls", headers={"x-api-key": KEY}).json()["items"]
    mine = next(c for c in calls if c["call_sid"] == call_sid)
    assert mine["status"] == "no-answer"
    assert mine["end_reason"] == "twilio-no-answer"


def test_calls_api_needs_the_key(client: TestClient) -> None:
    for path in ("/calls", f"/calls/{uuid.uuid4().hex[:24]}"):
        missing = client.get(path)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert client.get(path, headers={"x-api-key": "wrong"}).status_code == 401


def test_unknown_call_is_404_json(client: TestClient) -> None:
    for call_id in ("0" * 24, "not-an-object-id"):
        response = client.get(f"/calls/{call_id}", headers={"x-api-key": KEY})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_calls_limit_is_validated(client: TestClient) -> None:
    response = client.get("/calls?limit=abc", headers={"x-api-key": KEY})
    assert response.status_code == 422
    assert client.get("/calls?limit=0", headers={"x-api-key": KEY}).status_code == 422


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert "voice_gateway_outbound_frames_total 0" in text
    assert "voice_gateway_workers 1" in text  # one process, no metrics directory: its own
    assert "voice_gateway_worker_event_loop_lag_ms" not in text
