"""Twilio's status callbacks never write a call another gateway serves: the carrier's end
and `AnsweredBy` are recorded beside it, whatever that gateway's heartbeat says on this
machine's clock; that gateway's finish applies them, or, if it is gone, the lost-call
sweeper does (on its own clock). A call that never streamed is finished at once."""

from __future__ import annotations

import functools
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.synchronous.database import Database
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from storage import CallStatus, HeartbeatWriter
from storage.call_index import OPEN_CALLS
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


def _served_by(
    settings: Settings,
    call_id: str,
    gateway_id: str,
    *,
    alive: bool,
    clock_offset: timedelta = timedelta(0),
) -> None:
    """Mark the call as taken by `gateway_id`, which beats (alive; its clock `clock_offset`
    from this machine's) or has no heartbeat."""
    assert settings.mongodb_url is not None
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(settings.mongodb_url) as mongo:
        db: Database[dict[str, Any]] = mongo[settings.mongodb_db]
        # As `CallRepository.set_served_by` writes it: the open call's row, then the call.
        db[OPEN_CALLS].update_one(
            {"_id": call_id}, {"$set": {"at": datetime.now(UTC)}}, upsert=True
        )
        db["calls"].update_one({"_id": ObjectId(call_id)}, {"$set": {"served_by": gateway_id}})
    if alive:
        writer = HeartbeatWriter(settings.mongodb_url, settings.mongodb_db, gateway_id)
        try:
            writer.beat(at=datetime.now(UTC) + clock_offset, lease_s=settings.call_lease_s)
        finally:
            writer.close()


def _status(client: TestClient, call_sid: str, status: str, **extra: str) -> int:
    form = {"AccountSid": "AC" + "1" * 32, "CallSid": call_sid, "CallStatus": status, **extra}
    code: int = _signed_post(client, "/twilio/status", form).status_code
    return code


def _completed(client: TestClient, call_sid: str) -> int:
    return _status(client, call_sid, "completed")


def _note(settings: Settings, collection: str, call_id: str) -> dict[str, object] | None:
    assert settings.mongodb_url is not None
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(settings.mongodb_url) as mongo:
        doc: dict[str, object] | None = mongo[settings.mongodb_db][collection].find_one(
            {"_id": call_id}
        )
        return doc


def _carrier_end(settings: Settings, call_id: str) -> dict[str, object] | None:
    return _note(settings, "carrier_ends", call_id)


def _stored(settings: Settings, call_id: str) -> dict[str, object]:
    assert settings.mongodb_url is not None
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(settings.mongodb_url) as mongo:
        doc: dict[str, Any] | None = mongo[settings.mongodb_db]["calls"].find_one(
            {"_id": ObjectId(call_id)}
        )
    assert doc is not None
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


def test_completed_is_left_to_a_gateway_whose_beat_looks_old_on_this_clock(
    client: TestClient, settings: Settings
) -> None:
    # This gateway's clock is ten minutes ahead of the serving one's: its fresh beat looks
    # stale here, which is no evidence that it stopped.
    call_sid, call_id = _answered_call(client)
    _served_by(settings, call_id, "gw-behind", alive=True, clock_offset=-timedelta(minutes=10))
    assert _completed(client, call_sid) == 204
    assert _stored(settings, call_id)["ended_at"] is None
    end = _carrier_end(settings, call_id)
    assert end is not None and (end["status"], end["reason"]) == ("completed", "twilio-completed")


def test_answered_by_for_a_call_another_gateway_serves_goes_beside_it_until_its_finish(
    client: TestClient, settings: Settings
) -> None:
    call_sid, call_id = _answered_call(client)
    _served_by(settings, call_id, "gw-elsewhere", alive=True)
    before = _stored(settings, call_id)
    assert _status(client, call_sid, "in-progress", AnsweredBy="machine_start") == 204
    assert _completed(client, call_sid) == 204
    assert _stored(settings, call_id) == before  # not one write of its document
    answer = _note(settings, "carrier_answers", call_id)
    assert answer is not None and answer["answered_by"] == "machine_start"

    # Its gateway's final write takes the verdict over, and the notes beside it go.
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert client.portal is not None
    finished = client.portal.call(
        functools.partial(
            services.database.calls.finish_call,
            call_id,
            status=CallStatus.COMPLETED,
            end_reason="caller-hangup",
            ended_at=datetime.now(UTC),
        )
    )
    assert finished.answered_by == "machine_start"
    assert _note(settings, "carrier_answers", call_id) is None
    assert _carrier_end(settings, call_id) is None


def test_completed_for_a_call_whose_gateway_is_gone_is_finished_by_the_sweeper(
    settings: Settings,
) -> None:
    short = settings.model_copy(update={"call_lease_s": 1.0})
    with TestClient(create_app(short), base_url=PUBLIC) as client:
        call_sid, call_id = _answered_call(client)
        _served_by(short, call_id, "gw-gone", alive=False)
        assert _status(client, call_sid, "in-progress", AnsweredBy="human") == 204
        assert _completed(client, call_sid) == 204
        assert _carrier_end(short, call_id) is not None  # recorded, not finished here
        # The sweeper sees no beat from gw-gone for a whole lease on its own clock, then
        # finishes the call as the carrier said it ended.
        deadline = time.monotonic() + 30
        while (call := _stored(short, call_id))["ended_at"] is None:
            assert time.monotonic() < deadline, "the sweeper never finished the call"
            time.sleep(0.1)
        # The carrier's word is dropped after the call's end is stored, a write of its own.
        while _carrier_end(short, call_id) is not None:
            assert time.monotonic() < deadline, "the sweeper kept the carrier's end"
            time.sleep(0.1)
    assert (call["status"], call["end_reason"]) == ("completed", "twilio-completed")
    assert call["answered_by"] == "human"
    assert _carrier_end(short, call_id) is None


def test_completed_for_a_call_that_never_streamed_finishes_it(client: TestClient) -> None:
    call_sid, call_id = _answered_call(client)
    assert _completed(client, call_sid) == 204
    call = client.get(f"/calls/{call_id}", headers={"x-api-key": KEY}).json()
    assert (call["status"], call["end_reason"]) == ("completed", "twilio-completed")
