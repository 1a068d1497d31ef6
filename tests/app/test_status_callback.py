"""Twilio's final status callback never finishes a call under a live stream: a call another
live gateway serves gets the carrier's end recorded beside it (that gateway finishes it);
a call whose gateway is gone, or that never streamed, is finished at once."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from bson import ObjectId
from pymongo import MongoClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from storage import HeartbeatWriter
from telephony.twilio import TwilioSignatureValidator

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"
KEY = "vg_test_" + uuid.uuid4().hex  # GATEWAY_API_KEY must not be a placeholder


@pytest.fixture
def settings(mongo_url: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="app_" + uuid.uuid4().hex[:8],
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), base_url=PUBLIC) as test_client:
        yield test_client


def _signed_post(client: TestClient, path: str, form: dict[str, str]):  # type: ignore[no-untyped-def]
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + path, form)
    return client.post(path, data=form, headers={"X-Twilio-Signature": signature})


def _answered_call(client: TestClient) -> tuple[str, str]:
    """A call answered by the voice webhook (its stream not started): (call sid, call id)."""
    call_sid = "CA" + uuid.uuid4().hex
    form = {
        "AccountSid": "AC" + "1" * 32, "CallSid": call_sid, "CallStatus": "ringing",
        "Direction": "inbound", "From": "+15551230000", "To": "+15559870000",
    }  # fmt: skip
    twiml = _signed_post(client, "/twilio/voice", form)
    stream = ET.fromstring(twiml.text).find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return call_sid, params["call_id"]


def _served_by(settings: Settings, call_id: str, gateway_id: str, *, alive: bool) -> None:
    """Mark the call as taken by `gateway_id`, which beats (alive) or has no heartbeat."""
    assert settings.mongodb_url is not None
    with MongoClient(settings.mongodb_url) as mongo:
        mongo[settings.mongodb_db]["calls"].update_one(
            {"_id": ObjectId(call_id)}, {"$set": {"served_by": gateway_id}}
        )
    if alive:
        writer = HeartbeatWriter(settings.mongodb_url, settings.mongodb_db, gateway_id)
        try:
            writer.beat(at=datetime.now(UTC), lease_s=settings.call_lease_s)
        finally:
            writer.close()


def _completed(client: TestClient, call_sid: str) -> int:
    form = {"AccountSid": "AC" + "1" * 32, "CallSid": call_sid, "CallStatus": "completed"}
    status: int = _signed_post(client, "/twilio/status", form).status_code
    return status


def _carrier_end(settings: Settings, call_id: str) -> dict[str, object] | None:
    assert settings.mongodb_url is not None
    with MongoClient(settings.mongodb_url) as mongo:
        doc: dict[str, object] | None = mongo[settings.mongodb_db]["carrier_ends"].find_one(
            {"_id": call_id}
        )
        return doc


def test_completed_for_a_call_another_live_gateway_serves_is_left_to_it(
    client: TestClient, settings: Settings
) -> None:
    call_sid, call_id = _answered_call(client)
    _served_by(settings, call_id, "gw-elsewhere", alive=True)
    assert _completed(client, call_sid) == 204
    call = client.get(f"/calls/{call_id}", headers={"x-api-key": KEY}).json()
    assert call["ended_at"] is None and call["status"] != "completed"
    end = _carrier_end(settings, call_id)
    assert end is not None and (end["status"], end["reason"]) == ("completed", "twilio-completed")


def test_completed_for_a_call_whose_gateway_is_gone_finishes_it(
    client: TestClient, settings: Settings
) -> None:
    call_sid, call_id = _answered_call(client)
    _served_by(settings, call_id, "gw-gone", alive=False)
    assert _completed(client, call_sid) == 204
    call = client.get(f"/calls/{call_id}", headers={"x-api-key": KEY}).json()
    assert (call["status"], call["end_reason"]) == ("completed", "twilio-completed")
    assert _carrier_end(settings, call_id) is None


def test_completed_for_a_call_that_never_streamed_finishes_it(client: TestClient) -> None:
    call_sid, call_id = _answered_call(client)
    assert _completed(client, call_sid) == 204
    call = client.get(f"/calls/{call_id}", headers={"x-api-key": KEY}).json()
    assert (call["status"], call["end_reason"]) == ("completed", "twilio-completed")
