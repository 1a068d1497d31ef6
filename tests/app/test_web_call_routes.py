"""`POST /web-calls` through Starlette's test client, against the real database: what is
refused before any room is made (the same checks as an outbound call's), and a LiveKit
that cannot be reached. The calls themselves run in tests/integration/test_web_calls.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from tests.net import free_port

PUBLIC = "https://gw.example.com"
KEY = "vg_bootstrap-key-for-web-call-tests"
H = {"x-api-key": KEY}


def _settings(mongo_url: str, *, livekit: bool) -> Settings:
    # With `livekit`, a port nobody listens on: LiveKit is configured but unreachable.
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token="token",  # type: ignore[arg-type]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="web_app_" + uuid.uuid4().hex[:8],
        call_metadata_max_keys=3,
        livekit_url=f"http://127.0.0.1:{free_port()}" if livekit else None,
        livekit_api_key="key" if livekit else None,
        livekit_api_secret="secret" * 6 if livekit else None,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(mongo_url, livekit=True)), base_url=PUBLIC) as c:
        yield c


def _assistant(client: TestClient, headers: dict[str, str]) -> str:
    body = {"name": "Web", "system_prompt": "You help {{customer}}.", "greeting": "Hi."}
    created = client.post("/assistants", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _other_org_key(client: TestClient) -> dict[str, str]:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    accounts = services.database.accounts

    async def make() -> str:
        org = await accounts.ensure_organization("globex")
        return (await accounts.create_key(org.id, name="admin"))[1]

    assert client.portal is not None
    return {"x-api-key": client.portal.call(make)}


def test_without_livekit_a_web_call_is_503(mongo_url: str) -> None:
    with TestClient(create_app(_settings(mongo_url, livekit=False)), base_url=PUBLIC) as client:
        aid = _assistant(client, H)
        refused = client.post("/web-calls", json={"assistant_id": aid}, headers=H)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "not_configured"
        assert client.get("/calls", headers=H).json()["items"] == []


def test_bad_web_calls_are_refused_before_a_call_is_stored(client: TestClient) -> None:
    aid = _assistant(client, H)
    theirs = _assistant(client, _other_org_key(client))
    for assistant_id in (theirs, "0" * 24, "not-an-id"):
        missing = client.post(
            "/web-calls", json={"assistant_id": assistant_id, "metadata": {"customer": "x"}},
            headers=H,
        )  # fmt: skip
        assert missing.status_code == 404, missing.text
        assert missing.json()["error"]["code"] == "not_found"
    # The prompt's placeholders need values, as an outbound call's do.
    unfilled = client.post("/web-calls", json={"assistant_id": aid}, headers=H)
    assert unfilled.status_code == 422, unfilled.text
    assert unfilled.json()["error"]["details"] == [
        {"loc": ["body", "metadata", "customer"], "msg": "missing"}
    ]
    # Metadata is bounded and stored as outbound calls' is (keys, size, storable keys).
    many = {"customer": "x", **{f"k{i}": "v" for i in range(3)}}
    too_many = client.post("/web-calls", json={"assistant_id": aid, "metadata": many}, headers=H)
    assert too_many.status_code == 422
    assert too_many.json()["error"]["details"][0]["loc"] == ["body", "metadata"]
    dotted = client.post(
        "/web-calls", json={"assistant_id": aid, "metadata": {"a.b": "v"}}, headers=H
    )
    assert dotted.status_code == 422
    assert dotted.json()["error"]["details"][0]["loc"] == ["metadata"]
    extra = client.post("/web-calls", json={"assistant_id": aid, "to_number": "+1"}, headers=H)
    assert extra.status_code == 422
    assert client.post("/web-calls", json={"assistant_id": aid}).status_code == 401
    assert client.get("/calls", headers=H).json()["items"] == []


def test_an_unreachable_livekit_fails_the_stored_call_502(client: TestClient) -> None:
    aid = _assistant(client, H)
    failed = client.post(
        "/web-calls", json={"assistant_id": aid, "metadata": {"customer": "x"}}, headers=H
    )
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["code"] == "livekit_error"
    [call] = client.get("/calls", headers=H).json()["items"]
    assert call["transport"] == "web" and call["direction"] == "inbound"
    assert call["status"] == "failed" and call["end_reason"] == "livekit-error"
    assert call["ended_at"] is not None
