"""An assistant's voicemail plan through the API: validated (a message to leave is
required, 1000 characters at most), replaced or removed by PATCH, published as stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

KEY = "vg_test_" + uuid.uuid4().hex
H = {"x-api-key": KEY}
BASE = {"name": "Reminders", "system_prompt": "Remind {{customer}}."}


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="app_" + uuid.uuid4().hex[:8],
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_plan_is_validated_stored_replaced_and_removed(client: TestClient) -> None:
    for bad in (
        {"action": "leave_message"},
        {"action": "leave_message", "message": " "},
        {"action": "leave_message", "message": "x" * 1001},
        {"action": "greet"},
        {"action": "hangup", "extra": 1},
    ):
        refused = client.post("/assistants", json={**BASE, "voicemail": bad}, headers=H)
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"]["code"] == "invalid_request"
    plan = {"action": "leave_message", "message": "Hi {{customer}}, call us back."}
    created = client.post("/assistants", json={**BASE, "voicemail": plan}, headers=H)
    assert created.status_code == 201, created.text
    assert created.json()["voicemail"] == plan
    assistant = f"/assistants/{created.json()['id']}"
    assert client.get(assistant, headers=H).json()["voicemail"] == plan
    hang_up = client.patch(assistant, json={"voicemail": {"action": "hangup"}}, headers=H)
    assert hang_up.status_code == 200, hang_up.text
    assert hang_up.json()["voicemail"] == {"action": "hangup", "message": ""}
    bad = client.patch(assistant, json={"voicemail": {"action": "leave_message"}}, headers=H)
    assert bad.status_code == 422
    removed = client.patch(assistant, json={"voicemail": None}, headers=H)
    assert removed.status_code == 200 and removed.json()["voicemail"] is None
    assert client.get(assistant, headers=H).json()["voicemail"] is None
    plain = client.post("/assistants", json=BASE, headers=H)
    assert plain.status_code == 201 and plain.json()["voicemail"] is None
