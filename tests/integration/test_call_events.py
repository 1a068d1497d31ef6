"""Call events through the durable outbox, end to end: a gateway process, the simulated
Twilio caller, moto S3 for the recording, FerretDB, and a signing-checking receiver.

A receiver subscribed to every type gets started, status, each turn, the final status,
recording.ready and call.ended of a real call, each once, signed, in the order of the
events' places, and a refused first attempt holds the later events back until it is
accepted. The default subscription gets only `call.ended`, with today's body. An unknown
type is refused at save. A gateway killed with deliveries owed delivers each after the
restart, once, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from storage import Database
from storage.documents import AssistantDocument
from tests.s3_server import S3Server
from tests.webhook_receiver import ReceivedWebhook, WebhookReceiver, run_webhook_receiver
from webhooks.events import EVENT_TYPES
from webhooks.signing import verify

from .conftest import GatewayProcess, run_gateway
from .test_recorded_calls import assistant_body, new_bucket, recording_env

pytestmark = pytest.mark.timeout(240)

EVERY = "+15550007001"
DEFAULT = "+15550007002"
KILLED = "+15550007003"
# The report's fields, in order, as receivers parsed them before other events existed.
CALL_ENDED_FIELDS = [
    "id", "assistant_id", "direction", "from_number", "to_number", "transport", "call_sid",
    "status", "started_at", "ended_at", "duration_s", "end_reason", "recording_url",
    "recording", "metadata", "transcript", "latency_p50_ms", "latency_p95_ms", "usage",
    "cost",  # added with cost per call, after every field receivers knew
]  # fmt: skip


@pytest.fixture(scope="module")
def gateway(
    mongo_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = recording_env(s3_server, new_bucket(s3_server))
    with run_gateway(mongo_url, tmp_path_factory.mktemp("events"), env) as running:
        yield running


def _phone(gateway: GatewayProcess, number: str) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token,
        to_number=number,
    )  # fmt: skip


async def _assistant(
    http: httpx.AsyncClient, headers: dict[str, str], url: str, number: str, **fields: object
) -> dict[str, object]:
    claimed = await http.post("/numbers", json={"number": number}, headers=headers)
    assert claimed.status_code == 201, claimed.text
    created = await http.post(
        "/assistants",
        json={**assistant_body(url, number, webhook_events=None), **fields},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    body: dict[str, object] = created.json()
    return body


async def _one_turn_call(gateway: GatewayProcess, http: httpx.AsyncClient, number: str) -> str:
    """Greeting, one question, the answer, hang-up: the call's id."""
    call = _phone(gateway, number)
    await call.start(http)
    try:
        await call.wait_agent_audio(within_s=10)
        await call.wait_agent_silent()
        call.say(espeak_mulaw("What are your opening hours?"))
        await call.wait_said()
        await call.wait_agent_audio(within_s=15)
        await call.wait_agent_silent()
        await call.stop()
    finally:
        await call.aclose()
    assert call.call_id is not None
    return call.call_id


def _wait(receiver: WebhookReceiver, done: object, within_s: float = 60.0) -> None:
    assert callable(done)
    deadline = time.monotonic() + within_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"received: {[r.json()['type'] for r in receiver.received]}")
        time.sleep(0.05)


async def _wait_until(done: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not await done():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.1)


async def _asked_for_analysis(openai_base_url: str) -> bool:
    """Whether the OpenAI fake holds the analysis request (the one test that asks for it)."""
    base = openai_base_url.removesuffix("/v1")
    async with httpx.AsyncClient(timeout=5) as http:
        asked = (await http.get(base + "/control/completions")).json()
    return any("fake:hold-first" in str(body) for body in asked)


def _types(received: list[ReceivedWebhook]) -> list[str]:
    out = []
    for request in received:
        body = request.json()
        kind = body["type"]
        if kind == "call.status":
            kind += ":" + body["status"]
        elif kind == "call.turn":
            kind += f":{body['turn']['index']}"
        out.append(kind)
    return out


def _check_sequence(types: list[str]) -> None:
    """started, in-progress, the turns in order, the final status, recording, report,
    analysis."""
    assert types[:2] == ["call.started", "call.status:in-progress"], types
    turns = [t for t in types if t.startswith("call.turn:")]
    assert turns == [f"call.turn:{i}" for i in range(len(turns))] and len(turns) >= 3, types
    assert types[2 : 2 + len(turns)] == turns, types
    assert types[2 + len(turns)].startswith("call.status:"), types
    assert types[-3:] == ["recording.ready", "call.ended", "call.analyzed"], types
    assert len(types) == len(turns) + 6, types


async def test_every_event_of_a_call_arrives_once_signed_in_order_and_a_retry_holds_the_rest(
    gateway: GatewayProcess,
) -> None:
    headers = {"x-api-key": gateway.api_key}
    with run_webhook_receiver("/hooks/every") as receiver:
        receiver.script[:] = [500]  # the first attempt of the first event is refused
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
            created = await _assistant(
                http, headers, receiver.url, EVERY, webhook_events=list(EVENT_TYPES)
            )
            assert created["webhook_events"] == list(EVENT_TYPES)
            secret = (await http.get("/webhooks/secret", headers=headers)).json()["secret"]
            call_id = await _one_turn_call(gateway, http, EVERY)
            await asyncio.to_thread(
                _wait,
                receiver,
                lambda: any(r.json()["type"] == "call.analyzed" for r in receiver.accepted()),
            )
            deliveries = (
                await http.get("/webhooks/deliveries", params={"call_id": call_id}, headers=headers)
            ).json()["items"]
            # Redelivery works for any type: a turn goes out again, same id and body.
            turn_id = f"dlv_{call_id}_call_turn_1"
            again = await http.post(f"/webhooks/deliveries/{turn_id}/redeliver", headers=headers)
            assert again.status_code == 200, again.text
            count = len(receiver.received)
            await asyncio.to_thread(_wait, receiver, lambda: len(receiver.received) > count)

    received = receiver.received[:count]
    # The refused attempt was the call's first event; nothing came before it was accepted.
    assert received[0].answered == 500 and received[0].json()["type"] == "call.started"
    assert received[1].delivery_id == received[0].delivery_id and received[1].answered == 200
    accepted = [r for r in received if r.answered == 200]
    assert len({r.delivery_id for r in accepted}) == len(accepted)  # each once
    _check_sequence(_types(accepted))
    for request in received:
        verify(secret, timestamp=request.timestamp, body=request.body,
               signature=request.signature, now=time.time())  # fmt: skip
        body = request.json()
        assert body["id"] == request.delivery_id and body["id"].startswith(f"dlv_{call_id}_")
        assert body["call"]["id"] == call_id
    assert {d["id"] for d in deliveries} == {r.delivery_id for r in accepted}
    analyzed = accepted[-1].json()
    assert analyzed["analysis"]["status"] == "skipped", analyzed  # it has no analysis plan
    assert analyzed["analysis"]["reason"] == "no analysis plan"
    ended = accepted[-2].json()
    assert ended["id"] == f"dlv_{call_id}_call_ended"
    ready = accepted[-3].json()["recording"]
    assert ready["status"] == "complete" and ready["url"]
    again_body = receiver.received[-1]
    assert again_body.delivery_id == turn_id
    assert again_body.body == next(r.body for r in accepted if r.delivery_id == turn_id)


async def test_the_default_subscription_sends_only_call_ended_as_before(
    gateway: GatewayProcess,
) -> None:
    headers = {"x-api-key": gateway.api_key}
    with run_webhook_receiver("/hooks/default") as receiver:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
            created = await _assistant(http, headers, receiver.url, DEFAULT)
            assert created["webhook_events"] == ["call.ended", "call.analyzed"]
            call_id = await _one_turn_call(gateway, http, DEFAULT)
            await asyncio.to_thread(receiver.wait_accepted, 2, within_s=60)
            stored = (await http.get(f"/calls/{call_id}", headers=headers)).json()
            # Every other event is stored all the same (for the event stream), not sent:
            # a later call's report arriving proves the outbox had time to send them.
            await _one_turn_call(gateway, http, DEFAULT)
            await asyncio.to_thread(receiver.wait_accepted, 4, within_s=60)
    types = [r.json()["type"] for r in receiver.received]
    assert types == ["call.ended", "call.analyzed"] * 2, types
    report = receiver.received[0]
    assert report.delivery_id == f"dlv_{call_id}_call_ended"
    body = report.json()
    assert list(body) == ["id", "type", "call"] and body["id"] == report.delivery_id
    assert list(body["call"]) == CALL_ENDED_FIELDS
    assert [t["text"] for t in body["call"]["transcript"]] == [
        t["text"] for t in stored["transcript"]
    ]


async def test_an_unknown_event_type_is_refused_when_the_assistant_is_saved(
    gateway: GatewayProcess,
) -> None:
    headers = {"x-api-key": gateway.api_key}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        body = {**assistant_body("http://127.0.0.1:9/x", "+15550007004"), "phone_numbers": []}
        refused = await http.post(
            "/assistants",
            json={**body, "webhook_events": ["call.ended", "call.exploded"]},
            headers=headers,
        )
        assert refused.status_code == 422, refused.text
        assert ["webhook_events", 1] in [d["loc"] for d in refused.json()["error"]["details"]]
        created = await http.post("/assistants", json=body, headers=headers)
        assert created.status_code == 201, created.text
        path = f"/assistants/{created.json()['id']}"
        patched = await http.patch(path, json={"webhook_events": ["call.turn"]}, headers=headers)
        assert patched.status_code == 200 and patched.json()["webhook_events"] == ["call.turn"]
        bad = await http.patch(path, json={"webhook_events": ["turn"]}, headers=headers)
        assert bad.status_code == 422, bad.text
        assert ["webhook_events", 0] in [d["loc"] for d in bad.json()["error"]["details"]]
        kept = (await http.get(path, headers=headers)).json()
        assert kept["webhook_events"] == ["call.turn"]


async def test_an_assistant_stored_before_webhook_events_reads_as_the_default(
    database: Database,
) -> None:
    now = datetime.now(UTC)
    doc = AssistantDocument(
        org_id="org", name="old", system_prompt="hi", greeting="", created_at=now, updated_at=now
    )
    await doc.insert()
    raw = await AssistantDocument.get_pymongo_collection().find_one({"_id": doc.id})
    assert raw is not None and raw.get("webhook_events") is None
    stored = await database.assistants.get_any(str(doc.id))
    assert stored is not None
    assert stored.config.webhook_events == ["call.ended", "call.analyzed"]


async def test_a_killed_gateway_delivers_each_owed_event_after_the_restart_once_in_order(
    mongo_url: str, s3_server: S3Server, openai_base_url: str, tmp_path: Path
) -> None:
    """Killed while the call's analysis waits for the model, after its call.ended was
    queued: the restarted gateway runs the analysis again and sends call.analyzed after
    every other event, each once."""
    env = {
        **recording_env(s3_server, new_bucket(s3_server)),
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_base_url,
        "ANALYSIS_TIMEOUT_S": "10",
        "ANALYSIS_LEASE_S": "25",
        "ANALYSIS_POLL_S": "1",
        "WEBHOOK_RETRY_BASE_S": "1",
        "WEBHOOK_RETRY_CAP_S": "1",
        "WEBHOOK_MAX_ATTEMPTS": "100",
        "CALL_LEASE_S": "3",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_webhook_receiver("/hooks/killed") as receiver:
        receiver.script[:] = [500] * 10_000  # down until the restart
        with run_gateway(mongo_url, tmp_path / "a", env) as first:
            headers = {"x-api-key": first.api_key}
            async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:
                await _assistant(
                    http,
                    headers,
                    receiver.url,
                    KILLED,
                    webhook_events=list(EVENT_TYPES),
                    analysis={"summary_prompt": "Summarise the call. fake:hold-first"},
                )
                secret = (await http.get("/webhooks/secret", headers=headers)).json()["secret"]
                # Call 1 ends: its events are all owed (the receiver refuses the first).
                ended_id = await _one_turn_call(first, http, KILLED)
                owed = f"dlv_{ended_id}_call_ended"
                await asyncio.to_thread(
                    _wait, receiver, lambda: any(r.answered == 500 for r in receiver.received)
                )
                deliveries = (
                    await http.get(
                        "/webhooks/deliveries", params={"call_id": ended_id}, headers=headers
                    )
                ).json()["items"]
                deadline = time.monotonic() + 60
                while owed not in {d["id"] for d in deliveries}:  # the report is queued
                    assert time.monotonic() < deadline, deliveries
                    await asyncio.sleep(0.1)
                    deliveries = (
                        await http.get(
                            "/webhooks/deliveries", params={"call_id": ended_id}, headers=headers
                        )
                    ).json()["items"]
                # The model holds the analysis: the gateway dies between the two events.
                await _wait_until(lambda: _asked_for_analysis(openai_base_url))
                os.kill(first.pid, signal.SIGKILL)
        refused_before = len(receiver.received)
        assert all(r.answered == 500 for r in receiver.received)
        receiver.script.clear()  # the CRM is back
        same = {
            **env,
            "MONGODB_DB": first.db_name,
            "TWILIO_AUTH_TOKEN": first.auth_token,
            "GATEWAY_API_KEY": first.api_key,
        }
        with run_gateway(mongo_url, tmp_path / "b", same):
            await asyncio.to_thread(
                _wait,
                receiver,
                lambda: any(r.json()["type"] == "call.analyzed" for r in receiver.accepted()),
                120.0,
            )
    accepted = receiver.accepted()
    analysis = accepted[-1].json()["analysis"]
    assert analysis["status"] == "done" and analysis["summary"], analysis
    assert refused_before >= 1
    assert len({r.delivery_id for r in accepted}) == len(accepted)  # each once
    assert all(r.json()["call"]["id"] == ended_id for r in accepted)
    _check_sequence(_types(accepted))
    for request in accepted:
        verify(secret, timestamp=request.timestamp, body=request.body,
               signature=request.signature, now=time.time())  # fmt: skip
