"""`POST /twilio/amd` (Twilio's AsyncAmdStatusCallback): signed like every Twilio webhook;
a verdict for an open call not served here is kept beside it (for the gate of whichever
gateway serves it, and for its finish); unknown calls, finished calls and unknown words are
ignored. The live path (a gate fed at once) is tests/integration/test_twilio_voicemail.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from telephony.twilio import TwilioSignatureValidator
from tests.app.test_status_callback import _answered_call, _completed, _stored

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"
KEY = "vg_test_" + uuid.uuid4().hex


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


def _amd(client: TestClient, call_sid: str, answered_by: str, *, call_id: str = "") -> int:
    path = "/twilio/amd" + (f"?call_id={call_id}" if call_id else "")
    form = {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": call_sid,
        "AnsweredBy": answered_by,
        "MachineDetectionDuration": "4200",
    }
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + path, form)
    code: int = client.post(path, data=form, headers={"X-Twilio-Signature": signature}).status_code
    return code


def _answer_note(settings: Settings, call_id: str) -> dict[str, Any] | None:
    assert settings.mongodb_url is not None
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(settings.mongodb_url) as mongo:
        doc: dict[str, Any] | None = mongo[settings.mongodb_db]["carrier_answers"].find_one(
            {"_id": call_id}
        )
        return doc


def test_unsigned_or_badly_signed_verdicts_are_refused(client: TestClient) -> None:
    form = {"CallSid": "CA" + "2" * 32, "AnsweredBy": "human"}
    assert client.post("/twilio/amd", data=form).status_code == 403
    bad = {"X-Twilio-Signature": "A" * 27 + "="}
    assert client.post("/twilio/amd", data=form, headers=bad).status_code == 403
    signature = TwilioSignatureValidator("another-token").sign(PUBLIC + "/twilio/amd", form)
    wrong = {"X-Twilio-Signature": signature}
    assert client.post("/twilio/amd", data=form, headers=wrong).status_code == 403


def test_a_verdict_for_no_call_of_ours_is_ignored(client: TestClient) -> None:
    assert _amd(client, "CA" + "3" * 32, "machine_end_beep") == 204
    assert _amd(client, "CA" + "3" * 32, "human", call_id="0" * 24) == 204


def test_a_verdict_before_the_stream_is_kept_beside_the_call(
    client: TestClient, settings: Settings
) -> None:
    """The stream has not started (or another gateway serves it): a note, never a write of
    the call's document; the finish copies it onto the call."""
    call_sid, call_id = _answered_call(client)
    assert _amd(client, call_sid, "robot-voice") == 204  # not Twilio's word: ignored
    assert _answer_note(settings, call_id) is None
    assert _amd(client, call_sid, "machine_end_beep", call_id=call_id) == 204
    note = _answer_note(settings, call_id)
    assert note is not None and note["answered_by"] == "machine_end_beep"
    assert _stored(settings, call_id).get("answered_by") is None
    assert _completed(client, call_sid) == 204
    assert _stored(settings, call_id)["answered_by"] == "machine_end_beep"
    # A verdict after the end changes nothing.
    assert _amd(client, call_sid, "human", call_id=call_id) == 204
    assert _stored(settings, call_id)["answered_by"] == "machine_end_beep"


def test_a_verdict_naming_another_calls_sid_is_ignored(
    client: TestClient, settings: Settings
) -> None:
    _, call_id = _answered_call(client)
    assert _amd(client, "CA" + "4" * 32, "human", call_id=call_id) == 204
    assert _answer_note(settings, call_id) is None
