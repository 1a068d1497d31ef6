"""Webhook routes through Starlette's test client, against the real database, with the
gateway's own outbox delivering to a real HTTP receiver on loopback."""

from __future__ import annotations

import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services import Services
from gateway.settings import Settings
from telephony.twilio import TwilioSignatureValidator
from tests.net import free_port

PUBLIC = "https://gw.example.com"
TOKEN = "test-auth-token"
KEY = "vg_bootstrap-key-for-webhook-tests"
H = {"x-api-key": KEY}


def _settings(mongo_url: str, allow: list[str]) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="webhook_app_" + uuid.uuid4().hex[:8],
        webhook_allow_hosts=allow,
        webhook_retry_base_s=0.05,
        webhook_retry_cap_s=0.1,
        webhook_max_attempts=3,
    )


class _Receiver(BaseHTTPRequestHandler):
    """Answers by path: /ok -> 200, /gone -> 410."""

    seen: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.seen.append(self.path)
        self.send_response(200 if self.path == "/ok" else 410)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver_url() -> Iterator[str]:
    handler = type("Handler", (_Receiver,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    app = create_app(_settings(mongo_url, ["127.0.0.1"]))
    with TestClient(app, base_url=PUBLIC) as test_client:
        yield test_client


def _assistant(**changes: object) -> dict[str, object]:
    return {"name": "Support", "system_prompt": "Help.", **changes}


def _finished_call(client: TestClient, number: str) -> str:
    """A Twilio call to `number`, then Twilio's `completed` status callback."""
    sid = "CA" + uuid.uuid4().hex
    form = {"AccountSid": "AC" + "1" * 32, "CallSid": sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": "+15551230000", "To": number}  # fmt: skip
    validator = TwilioSignatureValidator(TOKEN)
    signature = validator.sign(PUBLIC + "/twilio/voice", form)
    voice = client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": signature})
    stream = ET.fromstring(voice.text).find("./Connect/Stream")
    assert stream is not None
    call_id = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}["call_id"]
    status = {**form, "CallStatus": "completed"}
    url = f"{PUBLIC}/twilio/status?call_id={call_id}"
    done = client.post(f"/twilio/status?call_id={call_id}", data=status,
                       headers={"X-Twilio-Signature": validator.sign(url, status)})  # fmt: skip
    assert done.status_code == 204
    return call_id


def _wait_for(client: TestClient, query: str, n: int, headers: dict[str, str] = H) -> list[Any]:
    deadline = time.monotonic() + 15
    while True:
        items: list[Any] = client.get("/webhooks/deliveries" + query, headers=headers).json()[
            "items"
        ]
        if len(items) >= n:
            return items
        assert time.monotonic() < deadline, items
        time.sleep(0.05)


def _other_org_key(client: TestClient) -> str:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    accounts = services.database.accounts

    async def make() -> str:
        org = await accounts.ensure_organization("globex-" + uuid.uuid4().hex[:6])
        return (await accounts.create_key(org.id, name="other"))[1]

    assert client.portal is not None
    return client.portal.call(make)


def test_deliveries_listed_filtered_fetched_and_redelivered(
    client: TestClient, receiver_url: str
) -> None:
    for path, number in (("/ok", "+15550300001"), ("/gone", "+15550300002")):
        claimed = client.post("/numbers", json={"number": number}, headers=H)
        assert claimed.status_code == 201, claimed.text
        created = client.post(
            "/assistants",
            json=_assistant(webhook_url=receiver_url + path, phone_numbers=[number]),
            headers=H,
        )
        assert created.status_code == 201, created.text
    ok_call = _finished_call(client, "+15550300001")
    gone_call = _finished_call(client, "+15550300002")

    delivered = _wait_for(client, "?status=delivered", 1)
    failed = _wait_for(client, "?status=failed", 1)
    assert [d["call_id"] for d in delivered] == [ok_call]
    assert [d["call_id"] for d in failed] == [gone_call]
    assert len(_wait_for(client, "", 2)) == 2
    by_call = client.get(f"/webhooks/deliveries?call_id={gone_call}", headers=H).json()["items"]
    assert [d["id"] for d in by_call] == [failed[0]["id"]]
    assert client.get("/webhooks/deliveries?status=lost", headers=H).status_code == 422

    one = client.get(f"/webhooks/deliveries/{failed[0]['id']}", headers=H)
    assert one.status_code == 200
    body = one.json()
    assert body["event"] == "call.ended" and body["url"] == receiver_url + "/gone"
    assert [a["status_code"] for a in body["attempts"]] == [410]
    assert body["attempts"][0]["latency_ms"] > 0 and body["attempts"][0]["error"] is None

    other_key = _other_org_key(client)
    hidden = client.get(f"/webhooks/deliveries/{failed[0]['id']}", headers={"x-api-key": other_key})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    assert client.get("/webhooks/deliveries", headers={"x-api-key": other_key}).json() == {
        "items": []
    }
    assert (
        client.post(
            f"/webhooks/deliveries/{failed[0]['id']}/redeliver", headers={"x-api-key": other_key}
        ).status_code
        == 404
    )
    assert client.get("/webhooks/deliveries/nope", headers=H).status_code == 404

    again = client.post(f"/webhooks/deliveries/{failed[0]['id']}/redeliver", headers=H)
    assert again.status_code == 200, again.text
    queued = again.json()
    assert queued["status"] == "pending" and queued["attempt_count"] == 0
    assert [a["status_code"] for a in queued["attempts"]] == [410]  # history kept
    deadline = time.monotonic() + 15
    while (
        len(client.get(f"/webhooks/deliveries/{failed[0]['id']}", headers=H).json()["attempts"]) < 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    final = client.get(f"/webhooks/deliveries/{failed[0]['id']}", headers=H).json()
    assert final["status"] == "failed" and final["attempt_count"] == 1


def test_the_secret_is_stable_and_per_organisation(client: TestClient) -> None:
    first = client.get("/webhooks/secret", headers=H)
    assert first.status_code == 200
    secret = first.json()["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert client.get("/webhooks/secret", headers=H).json()["secret"] == secret
    other = client.get("/webhooks/secret", headers={"x-api-key": _other_org_key(client)})
    assert other.json()["secret"] != secret
    assert client.get("/webhooks/secret").status_code == 401


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/hook", "http://10.0.0.1/", "http://localhost:8080/", "http://[::1]/"]
)
def test_private_webhook_urls_are_422_unless_allowlisted(mongo_url: str, url: str) -> None:
    with TestClient(create_app(_settings(mongo_url, [])), base_url=PUBLIC) as strict:
        refused = strict.post("/assistants", json=_assistant(webhook_url=url), headers=H)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "invalid_request" and "webhook_url" in error["message"]
        assert error["details"][0]["loc"] == ["body", "webhook_url"]
        fine = strict.post(
            "/assistants", json=_assistant(webhook_url="https://hooks.example.com/x"), headers=H
        )
        assert fine.status_code == 201
        patched = strict.patch(
            f"/assistants/{fine.json()['id']}", json={"webhook_url": url}, headers=H
        )
        assert patched.status_code == 422
    allow = ["127.0.0.1", "10.0.0.0/8", "localhost", "::1"]
    with TestClient(create_app(_settings(mongo_url, allow)), base_url=PUBLIC) as lenient:
        accepted = lenient.post("/assistants", json=_assistant(webhook_url=url), headers=H)
        assert accepted.status_code == 201, accepted.text


def test_an_attempts_error_reads_as_a_category_not_exception_text(client: TestClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    claimed = client.post("/numbers", json={"number": "+15550300009"}, headers=H)
    assert claimed.status_code == 201, claimed.text
    created = client.post(
        "/assistants", json=_assistant(webhook_url=closed, phone_numbers=["+15550300009"]),
        headers=H,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    call_id = _finished_call(client, "+15550300009")
    (failed,) = _wait_for(client, f"?status=failed&call_id={call_id}", 1)
    assert [a["error"] for a in failed["attempts"]] == ["connection refused"] * 3
