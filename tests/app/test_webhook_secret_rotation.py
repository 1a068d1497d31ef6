"""Rotating the webhook signing secret: a receiver holding either secret verifies every
delivery during the grace period, and only the new one verifies after it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from starlette.testclient import TestClient

from gateway.app import create_app
from tests.app.test_webhook_routes import PUBLIC, H, _assistant, _finished_call, _settings
from tests.webhook_receiver import ReceivedWebhook, WebhookReceiver, run_webhook_receiver


def _deliver_one(client: TestClient, receiver: WebhookReceiver, number: str) -> ReceivedWebhook:
    """Finish a call to `number` and wait for its end-call webhook at `receiver`."""
    call_id = _finished_call(client, number)
    deadline = time.monotonic() + 30
    while not (mine := _reports_of(receiver, call_id)):
        assert time.monotonic() < deadline, "no report within 30 s"
        receiver.wait_accepted(len(receiver.accepted()) + 1, within_s=30)
    assert len(mine) == 1
    return mine[0]


def _reports_of(receiver: WebhookReceiver, call_id: str) -> list[ReceivedWebhook]:
    """The `call.ended` reports of `call_id` accepted (call.analyzed follows each)."""
    return [
        r
        for r in receiver.accepted()
        if r.json()["type"] == "call.ended" and r.json()["call"]["id"] == call_id
    ]


def test_a_rotation_keeps_the_old_secret_valid_for_the_grace_period(mongo_url: str) -> None:
    db = "rotation_" + uuid.uuid4().hex[:8]
    numbers = ["+1555040" + f"{n:04d}" for n in range(3)]
    with run_webhook_receiver() as receiver:
        settings = _settings(mongo_url, ["127.0.0.1"]).model_copy(update={"mongodb_db": db})
        with TestClient(create_app(settings), base_url=PUBLIC) as client:
            for number in numbers:
                claimed = client.post("/numbers", json={"number": number}, headers=H)
                assert claimed.status_code == 201, claimed.text
            created = client.post(
                "/assistants",
                json=_assistant(webhook_url=receiver.url, phone_numbers=numbers),
                headers=H,
            )
            assert created.status_code == 201, created.text
            old = client.get("/webhooks/secret", headers=H).json()["secret"]
            receiver.secrets = [old]

            before = _deliver_one(client, receiver, numbers[0])
            assert before.verified_by == (old,) and before.signature.count("v1=") == 1

            rotated = client.post("/webhooks/secret/rotate", headers=H)
            assert rotated.status_code == 200, rotated.text
            new = rotated.json()["secret"]
            assert new.startswith("whsec_") and new != old
            until = datetime.fromisoformat(rotated.json()["previous_valid_until"])
            assert until - datetime.now(UTC) > timedelta(hours=23)  # WEBHOOK_SECRET_GRACE_S: 24 h
            assert client.get("/webhooks/secret", headers=H).json()["secret"] == new
            assert client.post("/webhooks/secret/rotate").status_code == 401

            receiver.secrets = [old, new]
            during = _deliver_one(client, receiver, numbers[1])
            # Both signatures, the new one first: a receiver with either secret accepts it.
            assert during.verified_by == (old, new)
            assert during.signature.count("v1=") == 2
            assert during.signature.index("v1=") == 0 and "," in during.signature

        # The same organisation, served by a gateway whose grace period is over.
        expired = settings.model_copy(update={"webhook_secret_grace_s": 0.0})
        with TestClient(create_app(expired), base_url=PUBLIC) as client:
            after = _deliver_one(client, receiver, numbers[2])
            assert after.verified_by == (new,) and after.signature.count("v1=") == 1
