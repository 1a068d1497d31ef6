"""Management routes through Starlette's test client, against the real database."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from telephony.twilio import TwilioSignatureValidator

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"
KEY = "vg_bootstrap-key-for-tests"
H = {"x-api-key": KEY}


def _settings(mongo_url: str, db: str, key: str | None = KEY) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key=key,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db=db,
    )


@pytest.fixture
def db_name() -> str:
    return "mgmt_app_" + uuid.uuid4().hex[:8]


@pytest.fixture
def client(mongo_url: str, db_name: str) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(mongo_url, db_name)), base_url=PUBLIC) as test_client:
        yield test_client


def _assistant(**changes: object) -> dict[str, object]:
    return {
        "name": "Support",
        "system_prompt": "You help {{from_number}}.",
        "greeting": "Hi, you reached support.",
        **changes,
    }


def test_assistant_crud_and_patch(client: TestClient) -> None:
    created = client.post("/assistants", json=_assistant(), headers=H)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["stt_provider"] == "auto" and body["recording"] is True
    aid = body["id"]
    assert [a["id"] for a in client.get("/assistants", headers=H).json()["items"]] == [aid]

    patched = client.patch(
        f"/assistants/{aid}", json={"voice": "en-gb", "recording": False}, headers=H
    )
    assert patched.status_code == 200
    assert patched.json()["voice"] == "en-gb" and patched.json()["name"] == "Support"
    bad = client.patch(f"/assistants/{aid}", json={"max_duration_s": 1}, headers=H)
    assert bad.status_code == 422 and bad.json()["error"]["details"]
    unknown_field = client.patch(f"/assistants/{aid}", json={"colour": "red"}, headers=H)
    assert unknown_field.status_code == 422
    assert client.get(f"/assistants/{aid}", headers=H).json()["recording"] is False

    # Turn-taking: a patch changes the fields it gives, the others keep their value.
    turns = {"idle_timeout_s": 5, "backchannel_words": ["uh-huh"]}
    assert client.patch(f"/assistants/{aid}", json={"turn_taking": turns}, headers=H).is_success
    patched = client.patch(
        f"/assistants/{aid}", json={"turn_taking": {"idle_max_prompts": 1}}, headers=H
    )
    assert patched.status_code == 200, patched.text
    stored = client.get(f"/assistants/{aid}", headers=H).json()["turn_taking"]
    assert stored["idle_timeout_s"] == 5 and stored["idle_max_prompts"] == 1
    assert stored["backchannel_words"] == ["uh-huh"] and stored["pause_ms"] == 200
    bad = client.patch(f"/assistants/{aid}", json={"turn_taking": {"pause_ms": 1}}, headers=H)
    assert bad.status_code == 422

    assert client.delete(f"/assistants/{aid}", headers=H).status_code == 204
    gone = client.get(f"/assistants/{aid}", headers=H)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_bad_bodies_are_422_json(client: TestClient) -> None:
    for body in (
        {"name": "x"},  # no system prompt
        _assistant(phone_numbers=["555-1234"]),  # not E.164
        _assistant(webhook_url="ftp://example.com"),
        _assistant(stt_provider="whisper"),
    ):
        response = client.post("/assistants", json=body, headers=H)
        assert response.status_code == 422, body
        assert response.json()["error"]["code"] == "invalid_request"
    not_json = client.post(
        "/assistants", content=b"{nope", headers={**H, "content-type": "application/json"}
    )
    assert not_json.status_code == 422


def _register(client: TestClient, *numbers: str) -> None:
    for number in numbers:
        response = client.post("/numbers", json={"number": number}, headers=H)
        assert response.status_code == 201, response.text


def test_a_number_reaches_one_assistant(client: TestClient) -> None:
    _register(client, "+15550100001")
    first = client.post("/assistants", json=_assistant(phone_numbers=["+15550100001"]), headers=H)
    assert first.status_code == 201
    clash = client.post("/assistants", json=_assistant(phone_numbers=["+15550100001"]), headers=H)
    assert clash.status_code == 409 and "+15550100001" in clash.json()["error"]["message"]


def _voice(client: TestClient, to: str) -> ET.Element:
    form = {
        "AccountSid": "AC" + "1" * 32,
        "CallSid": "CA" + uuid.uuid4().hex,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15551230000",
        "To": to,
    }
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + "/twilio/voice", form)
    response = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    return ET.fromstring(response.text)


def test_inbound_number_reaches_its_assistant_with_filled_prompt(client: TestClient) -> None:
    _register(client, "+15550100002")
    aid = client.post(
        "/assistants", json=_assistant(phone_numbers=["+15550100002"]), headers=H
    ).json()["id"]
    stream = _voice(client, "+15550100002").find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    call = client.get(f"/calls/{params['call_id']}", headers=H).json()
    assert call["assistant_id"] == aid
    # Unmapped numbers go to the default assistant, in the default organisation.
    other = _voice(client, "+15550109999").find("./Connect/Stream")
    assert other is not None
    other_id = {p.attrib["name"]: p.attrib["value"] for p in other.findall("Parameter")}["call_id"]
    assert client.get(f"/calls/{other_id}", headers=H).json()["assistant_id"] is None


def test_inbound_call_with_unfillable_prompt_is_told_and_hung_up(client: TestClient) -> None:
    _register(client, "+15550100003")
    client.post(
        "/assistants",
        json=_assistant(greeting="Hello {{customer_name}}", phone_numbers=["+15550100003"]),
        headers=H,
    )
    twiml = _voice(client, "+15550100003")
    assert twiml.find("./Say") is not None and twiml.find("./Hangup") is not None
    assert twiml.find("./Connect") is None


def test_features_without_settings_answer_503(client: TestClient) -> None:
    aid = client.post("/assistants", json=_assistant(), headers=H).json()["id"]
    _register(client, "+15550100004")
    trunk = client.post(
        "/sip/trunks/inbound", json={"name": "t", "numbers": ["+15550100004"]}, headers=H
    )
    assert trunk.status_code == 503 and trunk.json()["error"]["code"] == "not_configured"
    call = client.post(
        "/call/outbound",
        json={"assistant_id": aid, "to_number": "+15550100005", "from_number": "+15550100006"},
        headers=H,
    )
    assert call.status_code == 503
    bad_number = client.post(
        "/call/outbound", json={"assistant_id": aid, "to_number": "5550100005"}, headers=H
    )
    assert bad_number.status_code == 422
    assert bad_number.json()["error"]["details"][0]["loc"] == ["to_number"]
    unknown = client.post(
        "/call/outbound", json={"assistant_id": "0" * 24, "to_number": "+15550100005"}, headers=H
    )
    assert unknown.status_code == 404


def test_metadata_keys_the_store_cannot_hold_are_refused_naming_the_field(
    client: TestClient,
) -> None:
    """FerretDB refuses a field name with '.' or a leading '$' (and BSON a NUL): such a key
    is bad input (422 naming `metadata`), not a database outage (503)."""
    aid = client.post("/assistants", json=_assistant(), headers=H).json()["id"]
    for key in ("a.b", "$x", "nul\x00"):
        refused = client.post(
            "/call/outbound",
            json={"assistant_id": aid, "to_number": "+15550100005", "metadata": {key: "v"}},
            headers=H,
        )
        assert refused.status_code == 422, refused.text
        [detail] = refused.json()["error"]["details"]
        assert detail["loc"] == ["metadata"] and repr(key) in detail["msg"], detail
    assert client.get("/calls", headers=H).json()["items"] == []


def test_call_list_pages_through_the_api(client: TestClient) -> None:
    for _ in range(5):
        _voice(client, "+15550100007")
    first = client.get("/calls", params={"limit": 2}, headers=H).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    ids = [c["id"] for c in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get("/calls", params={"limit": 2, "cursor": cursor}, headers=H).json()
        ids += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
    assert len(ids) == len(set(ids)) == 5
    bad = client.get("/calls", params={"cursor": "zzz"}, headers=H)
    assert bad.status_code == 422
    bad_date = client.get("/calls", params={"started_after": "yesterday"}, headers=H)
    assert bad_date.status_code == 422


def test_env_key_only_bootstraps_an_empty_database(mongo_url: str, db_name: str) -> None:
    with TestClient(create_app(_settings(mongo_url, db_name)), base_url=PUBLIC) as first:
        assert first.get("/assistants", headers=H).status_code == 200
    # A different env key later does not become a key of an existing database.
    later = _settings(mongo_url, db_name, key="vg_some-other-key-9d3b7e1f5a2c")
    with TestClient(create_app(later), base_url=PUBLIC) as second:
        refused = second.get("/assistants", headers={"x-api-key": "vg_some-other-key-9d3b7e1f5a2c"})
        assert refused.status_code == 401
        assert second.get("/assistants", headers=H).status_code == 200
