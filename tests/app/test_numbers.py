"""The phone-number registry through Starlette's test client, against the real database:
claims across organisations, the operator's command, inbound routing by the registry,
numbers on assistants and trunks, and the numbers in use before the registry existed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from storage import CallRecord, Organization, hash_api_key
from telephony.twilio import TwilioSignatureValidator

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"
KEY = "vg_bootstrap-key-for-number-tests"
H = {"x-api-key": KEY}
ORG_A = "acme-numbers"


def _settings(mongo_url: str, db: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        gateway_org=ORG_A,
        mongodb_url=mongo_url,
        mongodb_db=db,
    )


@pytest.fixture
def db_name() -> str:
    return "numbers_app_" + uuid.uuid4().hex[:8]


@pytest.fixture
def client(mongo_url: str, db_name: str) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(mongo_url, db_name)), base_url=PUBLIC) as test_client:
        yield test_client


def _org_key(client: TestClient, name: str) -> tuple[str, dict[str, str]]:
    """A new organisation `name` and a key of it: (its id, headers with the key)."""
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    accounts = services.database.accounts

    async def make() -> tuple[str, str]:
        org = await accounts.ensure_organization(name)
        return org.id, (await accounts.create_key(org.id, name="admin"))[1]

    assert client.portal is not None
    org_id, key = client.portal.call(make)
    return org_id, {"x-api-key": key}


def _org_id(client: TestClient, name: str) -> str:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert client.portal is not None
    org: Organization | None = client.portal.call(
        services.database.accounts.organization_named, name
    )
    assert org is not None
    return org.id


def _assistant(**changes: object) -> dict[str, object]:
    return {"name": "Support", "system_prompt": "Help.", **changes}


def _answer(client: TestClient, to: str) -> str:
    """Twilio's voice webhook for a call to `to`; the id of the call it stored."""
    form = {"AccountSid": "AC" + "1" * 32, "CallSid": "CA" + uuid.uuid4().hex,
            "CallStatus": "ringing", "Direction": "inbound",
            "From": "+15551230000", "To": to}  # fmt: skip
    signature = TwilioSignatureValidator(TOKEN).sign(PUBLIC + "/twilio/voice", form)
    response = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    return {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}["call_id"]


def _reached(client: TestClient, to: str) -> str | None:
    """The assistant an inbound call to `to` reaches (None: the default assistant)."""
    call_id = _answer(client, to)
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    assert client.portal is not None
    call: CallRecord = client.portal.call(services.database.calls.get_call, call_id)
    return call.assistant_id


def _operator(mongo_url: str, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`voice-gateway numbers ...`, as the operator runs it."""
    env = {**os.environ, "MONGODB_URL": mongo_url, "MONGODB_DB": db}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "numbers", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_number_is_claimed_once_and_a_conflict_names_no_organisation(
    client: TestClient, mongo_url: str, db_name: str
) -> None:
    org_a = _org_id(client, ORG_A)
    _, hb = _org_key(client, "globex")
    mine = client.post("/numbers", json={"number": "+1 (555) 010-0101"}, headers=H)
    assert mine.status_code == 201, mine.text
    assert mine.json()["number"] == "+15550100101" and mine.json()["assigned_by"] == "api"
    assert "org_id" not in mine.json()
    again = client.post("/numbers", json={"number": "+15550100101"}, headers=H)
    assert again.status_code == 201 and again.json()["created_at"] == mine.json()["created_at"]

    taken = client.post("/numbers", json={"number": "+15550100101"}, headers=hb)
    assert taken.status_code == 409
    assert taken.json() == {
        "error": {
            "code": "conflict",
            "message": "+15550100101 is not available to this organisation",
        }
    }
    assert ORG_A not in taken.text and org_a not in taken.text

    reserved = _operator(mongo_url, db_name, "reserve", "+15550100102")
    assert reserved.returncode == 0, reserved.stderr
    held = client.post("/numbers", json={"number": "+15550100102"}, headers=hb)
    assert held.status_code == 409
    # The same answer for a reserved number as for another organisation's.
    assert held.json()["error"] == {
        "code": "conflict",
        "message": "+15550100102 is not available to this organisation",
    }
    assert client.post("/numbers", json={"number": "+15550100102"}, headers=H).status_code == 409

    assert [n["number"] for n in client.get("/numbers", headers=H).json()["items"]] == [
        "+15550100101"
    ]
    assert client.get("/numbers", headers=hb).json() == {"items": []}
    bad = client.post("/numbers", json={"number": "555-0101"}, headers=hb)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["number"]


def test_assistants_use_only_their_organisations_numbers(client: TestClient) -> None:
    _, hb = _org_key(client, "globex")
    # First come is no longer first served: an unregistered number is refused.
    grabbed = client.post(
        "/assistants", json=_assistant(phone_numbers=["+15550100201"]), headers=hb
    )
    assert grabbed.status_code == 422, grabbed.text
    error = grabbed.json()["error"]
    assert error["details"] == [
        {"loc": ["phone_numbers", 0], "msg": "+15550100201 is not registered to this organisation"}
    ]

    assert client.post("/numbers", json={"number": "+15550100201"}, headers=H).status_code == 201
    created = client.post("/assistants", json=_assistant(phone_numbers=["+15550100201"]), headers=H)
    assert created.status_code == 201, created.text
    # Another organisation can neither create nor patch its way onto the number.
    other = client.post("/assistants", json=_assistant(), headers=hb).json()["id"]
    patched = client.patch(
        f"/assistants/{other}", json={"phone_numbers": ["+15550100201"]}, headers=hb
    )
    assert patched.status_code == 422
    assert patched.json()["error"]["details"][0]["loc"] == ["phone_numbers", 0]
    assert "acme" not in patched.text
    # Within the organisation a number still reaches one assistant.
    second = client.post("/assistants", json=_assistant(phone_numbers=["+15550100201"]), headers=H)
    assert second.status_code == 409 and "+15550100201" in second.json()["error"]["message"]
    assert _reached(client, "+15550100201") == created.json()["id"]


def test_inbound_calls_follow_the_registry_and_the_operator_reassigns(
    client: TestClient, mongo_url: str, db_name: str
) -> None:
    _, hb = _org_key(client, "globex")
    number = "+15550100301"
    assert client.post("/numbers", json={"number": number}, headers=H).status_code == 201
    a_id = client.post("/assistants", json=_assistant(phone_numbers=[number]), headers=H).json()[
        "id"
    ]
    b_id = client.post("/assistants", json=_assistant(), headers=hb).json()["id"]
    assert _reached(client, number) == a_id

    moved = _operator(mongo_url, db_name, "assign", "+1 555 010 0301", "--org", "globex")
    assert moved.returncode == 0, moved.stderr
    assert f"{number}: assigned to 'globex' (was '{ORG_A}')" in moved.stdout
    assert f"taken off assistant {a_id}" in moved.stdout
    # Acme's assistant lost the number, and calls to it no longer reach acme.
    assert client.get(f"/assistants/{a_id}", headers=H).json()["phone_numbers"] == []
    assert _reached(client, number) is None
    assert client.post("/numbers", json={"number": number}, headers=H).status_code == 409

    listed = client.get("/numbers", headers=hb).json()["items"]
    assert [(n["number"], n["assigned_by"]) for n in listed] == [(number, "operator")]
    given = client.patch(f"/assistants/{b_id}", json={"phone_numbers": [number]}, headers=hb)
    assert given.status_code == 200, given.text
    assert _reached(client, number) == b_id

    table = _operator(mongo_url, db_name, "list")
    assert table.returncode == 0 and f"{number}  globex  operator" in table.stdout
    unknown = _operator(mongo_url, db_name, "assign", number, "--org", "nobody")
    assert unknown.returncode == 1 and "no organisation named 'nobody'" in unknown.stderr


def test_a_number_is_released_only_by_its_organisation_and_when_unused(
    client: TestClient,
) -> None:
    _, hb = _org_key(client, "globex")
    number = "+15550100401"
    assert client.post("/numbers", json={"number": number}, headers=H).status_code == 201
    aid = client.post("/assistants", json=_assistant(phone_numbers=[number]), headers=H).json()[
        "id"
    ]
    not_theirs = client.delete(f"/numbers/{number}", headers=hb)
    free = client.delete("/numbers/+15550100499", headers=hb)
    assert not_theirs.status_code == free.status_code == 404
    assert not_theirs.json()["error"]["message"] == f"no number {number} in this organisation"
    in_use = client.delete(f"/numbers/{number}", headers=H)
    assert in_use.status_code == 409 and aid in in_use.json()["error"]["message"]
    client.patch(f"/assistants/{aid}", json={"phone_numbers": []}, headers=H)
    assert client.delete("/numbers/%2B15550100401", headers=H).status_code == 204
    assert client.get("/numbers", headers=H).json() == {"items": []}
    # Free again: the first organisation to ask may claim it.
    assert client.post("/numbers", json={"number": number}, headers=hb).status_code == 201


def test_trunk_numbers_must_be_the_organisations(client: TestClient) -> None:
    _, hb = _org_key(client, "globex")
    assert client.post("/numbers", json={"number": "+15550100501"}, headers=H).status_code == 201
    for path, body in (
        ("/sip/trunks/inbound", {"name": "in", "numbers": ["+15550100501"]}),
        (
            "/sip/trunks/outbound",
            {"name": "out", "address": "sip.example.com", "numbers": ["+15550100501"]},
        ),
    ):
        refused = client.post(path, json=body, headers=hb)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["error"]["details"][0]["loc"] == ["numbers", 0]
        # The owner gets past the number check (LiveKit is not configured here).
        assert client.post(path, json=body, headers=H).status_code == 503


def test_numbers_in_use_before_the_registry_are_adopted_once(mongo_url: str, db_name: str) -> None:
    """A database from before the registry: acme's assistant lists one number, acme and
    globex both list another, globex's trunk lists a third."""
    now = datetime.now(UTC)
    raw: MongoClient[dict[str, Any]] = MongoClient(mongo_url)
    try:
        db = raw[db_name]
        acme = db.organizations.insert_one(
            {"name": ORG_A, "is_default": True, "created_at": now}
        ).inserted_id
        globex = db.organizations.insert_one(
            {"name": "globex", "is_default": False, "created_at": now}
        ).inserted_id
        db.api_keys.insert_one({"org_id": str(acme), "name": "admin", "prefix": KEY[:8],
                                "key_hash": hash_api_key(KEY), "created_at": now})  # fmt: skip
        base = {"system_prompt": "Help.", "greeting": "", "created_at": now, "updated_at": now}
        own = db.assistants.insert_one(
            {**base, "org_id": str(acme), "name": "a", "phone_numbers": ["+15550100601"]}
        ).inserted_id
        shared = [
            db.assistants.insert_one(
                {**base, "org_id": str(org), "name": "both", "phone_numbers": ["+15550100602"]}
            ).inserted_id
            for org in (acme, globex)
        ]
        db.sip_trunks.insert_one({"org_id": str(globex), "livekit_id": "ST_x", "kind": "inbound",
                                  "provider": "generic", "name": "t",
                                  "numbers": ["+15550100603"], "created_at": now})  # fmt: skip
    finally:
        raw.close()

    settings = _settings(mongo_url, db_name)
    with TestClient(create_app(settings), base_url=PUBLIC) as client:
        mine = client.get("/numbers", headers=H).json()["items"]
        assert [(n["number"], n["assigned_by"]) for n in mine] == [("+15550100601", "migration")]
        _, hb = _org_key(client, "globex")
        theirs = client.get("/numbers", headers=hb).json()["items"]
        assert [n["number"] for n in theirs] == ["+15550100603"]
        assert _reached(client, "+15550100601") == str(own)
        assert _reached(client, "+15550100602") is None  # disputed: no organisation has it
        # The disputed assistant can still be renamed, but not given the number anew.
        renamed = client.patch(f"/assistants/{shared[0]}", json={"name": "renamed"}, headers=H)
        assert renamed.status_code == 200, renamed.text
        again = {"phone_numbers": ["+15550100602"]}
        assert client.patch(f"/assistants/{shared[0]}", json=again, headers=H).status_code == 422
        released = _operator(mongo_url, db_name, "release", "+15550100601")
        assert released.returncode == 0, released.stderr
    # Started again, the gateway does not hand back what the operator released.
    with TestClient(create_app(settings), base_url=PUBLIC) as client:
        assert client.get("/numbers", headers=H).json() == {"items": []}
        disputed = _operator(mongo_url, db_name, "list")
        assert "+15550100602  unregistered use by: acme-numbers, globex" in disputed.stdout
