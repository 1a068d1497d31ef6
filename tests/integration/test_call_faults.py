"""A call survives its parts failing, and ends in the right order.

Real parts, stopped for real: the gateway's own FerretDB is stopped mid-call and started
again; moto's S3 server is SIGSTOPped as the caller hangs up; Twilio's `completed` status
callback arrives while the stream still has turns to store."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from storage import CallStatus, Database, Direction, NewCall, new_turn_id
from telephony.twilio import TwilioSignatureValidator
from tests.ferretdb_server import embedded_ferretdb
from tests.s3_server import run_s3_server
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

from .conftest import GatewayProcess, run_gateway
from .test_recorded_calls import NUMBER, assistant_body, new_bucket, recording_env

pytestmark = pytest.mark.timeout(300)


def _phone(gateway: GatewayProcess, *, to_number: str = NUMBER) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token,
        to_number=to_number,
    )  # fmt: skip


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _metric(text: str, name: str) -> int:
    match = re.search(rf"^voice_gateway_{name} (\d+)$", text, re.MULTILINE)
    assert match is not None, name
    return int(match.group(1))


async def _answered(call: SimulatedTwilioCall, text: str) -> None:
    """The caller says `text` and the agent answers it to the end."""
    call.say(espeak_mulaw(text))
    await call.wait_said()
    await call.wait_agent_audio(within_s=30)
    await call.wait_agent_silent(within_s=60)


async def _stored(http: httpx.AsyncClient, gateway: GatewayProcess, call_id: str) -> Any:
    response = await http.get(f"/calls/{call_id}", headers={"x-api-key": gateway.api_key})
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_call_outlives_its_database_for_a_while(tmp_path: Path) -> None:
    database = embedded_ferretdb(tmp_path / "ferretdb")
    await asyncio.to_thread(database.start)
    try:
        with run_gateway(database.url, tmp_path, {"CALL_WRITE_OUTAGE_S": "120"}) as gateway:
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
                call = _phone(gateway)
                await call.start(http)
                try:
                    await call.wait_agent_audio(within_s=15)
                    await call.wait_agent_silent()
                    await asyncio.to_thread(database.stop)  # the database goes away

                    # The conversation goes on: a question answered ...
                    await _answered(call, "What are your opening hours?")
                    # ... and a barge-in over a long answer, all while the database is away.
                    call.say(espeak_mulaw("I would like to book an appointment."))
                    await call.wait_said()
                    await call.wait_agent_audio(within_s=30)
                    await asyncio.sleep(1.0)
                    call.say(espeak_mulaw("Yes please."))
                    await _until("a clear", lambda: asyncio.sleep(0, bool(call.log.clears)), 30)
                    await call.wait_said()
                    await call.wait_agent_audio(within_s=30)
                    await call.wait_agent_silent(within_s=60)

                    health = await http.get("/health")
                    assert health.status_code == 200
                    assert health.json()["database"] == "unavailable"
                    assert (await http.get("/ready")).status_code == 503

                    await asyncio.to_thread(database.start)  # ... and comes back
                    await _until(
                        "ready again",
                        lambda: _status_is(http, "/ready", 200),
                        within_s=60,
                    )
                    assert (await http.get("/health")).json()["database"] == "ok"
                    await _answered(call, "Are you open on Saturday?")
                    await call.stop()
                    assert call.log.close_code == 1000
                finally:
                    await call.aclose()

                assert call.call_id is not None
                stored = await _stored(http, gateway, call.call_id)
                metrics = (await http.get("/metrics")).text
        log = gateway.log_text()
    finally:
        await asyncio.to_thread(database.stop)

    assert (stored["status"], stored["end_reason"]) == ("completed", "caller-hung-up")
    turns = stored["transcript"]
    said = [(t["speaker"], t["text"]) for t in turns]
    assert [s for s, _ in said] == ["agent", "caller"] * 4 + ["agent"], said
    assert "hours" in said[1][1].lower() and said[2][1].startswith("We are open")
    assert "book" in said[3][1].lower() and turns[4]["interrupted"] is True
    assert said[6][1].startswith("Great")
    assert "open" in said[7][1].lower() and said[8][1].startswith("We are open")
    starts = [t["start_ms"] for t in turns]
    assert starts == sorted(starts)
    assert _metric(metrics, "calls_active") == 0
    assert "Task exception was never retrieved" not in log
    assert "agent reply failed" not in log


async def test_a_database_that_stays_away_ends_the_call_politely(tmp_path: Path) -> None:
    database = embedded_ferretdb(tmp_path / "ferretdb")
    await asyncio.to_thread(database.start)
    try:
        env: dict[str, str | None] = {"CALL_WRITE_OUTAGE_S": "4", "CALL_LEASE_S": "3"}
        with run_gateway(database.url, tmp_path, env) as gateway:
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
                call = _phone(gateway)
                await call.start(http)
                try:
                    await call.wait_agent_audio(within_s=15)
                    await call.wait_agent_silent()
                    await asyncio.to_thread(database.stop)
                    call.say(espeak_mulaw("What are your opening hours?"))
                    await call.wait_said()
                    # The agent answers, then says goodbye and the call ends on its own.
                    await call.wait_closed(within_s=90)
                    assert call.log.close_code == 1000
                finally:
                    await call.aclose()
                assert call.call_id is not None
                call_id = call.call_id
                await asyncio.to_thread(database.start)

                async def finished() -> bool:
                    try:
                        return (await _stored(http, gateway, call_id))["ended_at"] is not None
                    except (AssertionError, httpx.TransportError):
                        return False

                await _until("the call finished once the database is back", finished, 60)
                stored = await _stored(http, gateway, call_id)
                metrics = (await http.get("/metrics")).text
        log = gateway.log_text()
    finally:
        await asyncio.to_thread(database.stop)
    assert (stored["status"], stored["end_reason"]) == ("failed", "storage-unavailable")
    assert [t["speaker"] for t in stored["transcript"]] == ["agent"]  # said before it went
    assert _metric(metrics, "calls_active") == 0
    unwritten = [
        json.loads(line)
        for line in log.splitlines()
        if '"not stored: the call' in line and call_id in line
    ]
    turns = [entry["unwritten"] for entry in unwritten if entry.get("unwritten")]
    assert [turn["speaker"] for turn in turns][:2] == ["caller", "agent"], turns
    assert "hours" in str(turns[0]["text"]).lower(), turns
    assert "Task exception was never retrieved" not in log


async def _status_is(http: httpx.AsyncClient, path: str, code: int) -> bool:
    try:
        return (await http.get(path)).status_code == code
    except httpx.TransportError:
        return False


async def test_s3_stalled_at_hang_up_neither_holds_the_call_nor_loses_it(
    mongo_url: str, tmp_path: Path
) -> None:
    with run_s3_server(tmp_path) as s3, run_webhook_receiver() as receiver:
        assert s3.pid is not None
        bucket = new_bucket(s3)
        env = {
            **recording_env(s3, bucket),
            "RECORDING_FINISH_TIMEOUT_S": "3",
            "CALL_LEASE_S": "3",
        }
        with run_gateway(mongo_url, tmp_path, env) as gateway:
            headers = {"x-api-key": gateway.api_key}
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
                claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
                assert claimed.status_code in (200, 201), claimed.text
                created = await http.post(
                    "/assistants", json=assistant_body(receiver.url, NUMBER), headers=headers
                )
                assert created.status_code == 201, created.text
                call = _phone(gateway)
                await call.start(http)
                try:
                    await call.wait_agent_audio(within_s=15)
                    await call.wait_agent_silent()
                    await _answered(call, "What are your opening hours?")
                    os.kill(s3.pid, signal.SIGSTOP)  # S3 stalls as the caller hangs up
                    try:
                        await call.stop()  # the socket closes without waiting for S3
                        assert call.call_id is not None
                        call_id = call.call_id

                        async def finished() -> bool:
                            return (await _stored(http, gateway, call_id))["ended_at"] is not None

                        await _until("the call finished", finished, within_s=30)
                        # Three leases later it is still the caller's normal hang-up.
                        await asyncio.sleep(9)
                        stored = await _stored(http, gateway, call_id)
                        assert (stored["status"], stored["end_reason"]) == (
                            "completed",
                            "caller-hung-up",
                        ), stored
                    finally:
                        os.kill(s3.pid, signal.SIGCONT)
                finally:
                    await call.aclose()
                [report] = await asyncio.to_thread(receiver.wait_accepted, 1, within_s=120)
                body = report.json()["call"]
                download = await http.get(body["recording_url"])
        log = gateway.log_text()
    assert (body["status"], body["end_reason"]) == ("completed", "caller-hung-up")
    assert body["recording"]["status"] == "complete", body["recording"]
    assert download.status_code == 200 and len(download.content) > 44
    assert [t["speaker"] for t in body["transcript"]] == ["agent", "caller", "agent"]
    assert "finished a call whose gateway stopped" not in log


async def _completed_during_a_reply(
    serving: GatewayProcess, status_to: GatewayProcess, receiver: WebhookReceiver
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A call on `serving` whose Twilio `completed` callback reaches `status_to` while the
    agent still speaks, the stream's `stop` after it; the report sent and the call stored."""
    headers = {"x-api-key": serving.api_key}
    async with httpx.AsyncClient(base_url=serving.base_url, timeout=10) as http:
        claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
        assert claimed.status_code in (200, 201), claimed.text
        created = await http.post(
            "/assistants", json=assistant_body(receiver.url, NUMBER), headers=headers
        )
        assert created.status_code == 201, created.text
        call = _phone(serving)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            await _answered(call, "What are your opening hours?")
            call.say(espeak_mulaw("I would like to book an appointment."))
            await call.wait_said()
            await call.wait_agent_audio(within_s=30)
            form, signature = _completed(status_to, call, serving.auth_token)
            answer = await http.post(
                status_to.base_url + "/twilio/status",
                data=form,
                headers={"X-Twilio-Signature": signature},
            )
            assert answer.status_code == 204
            await asyncio.sleep(1.0)  # the agent goes on speaking a little
            await call.stop()
        finally:
            await call.aclose()
        [report] = await asyncio.to_thread(receiver.wait_accepted, 1, within_s=60)
        assert call.call_id is not None
        stored = await _stored(http, serving, call.call_id)
    sent: dict[str, Any] = report.json()["call"]
    return sent, stored


async def test_completed_callback_racing_the_streams_end_keeps_every_turn(
    mongo_url: str, tmp_path: Path
) -> None:
    with run_webhook_receiver() as receiver:
        env: dict[str, str | None] = {
            "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
            "WEBHOOK_RETRY_BASE_S": "0.2",
        }
        with run_gateway(mongo_url, tmp_path, env) as gateway:
            sent, stored = await _completed_during_a_reply(gateway, gateway, receiver)
    said = [(t["speaker"], t["text"]) for t in sent["transcript"]]
    assert said == [(t["speaker"], t["text"]) for t in stored["transcript"]]
    assert [s for s, _ in said] == ["agent", "caller", "agent", "caller", "agent"], said
    assert sent["transcript"][-1]["interrupted"] is True
    assert sent["status"] == stored["status"] == "completed"
    assert sent["end_reason"] == stored["end_reason"]


def _completed(
    gateway: GatewayProcess, call: SimulatedTwilioCall, auth_token: str
) -> tuple[dict[str, str], str]:
    """Twilio's signed `completed` status callback for `call`, as `gateway` receives it."""
    form = {
        "AccountSid": call.account_sid,
        "CallSid": call.call_sid,
        "CallStatus": "completed",
        "CallDuration": "12",
    }
    url = gateway.base_url + "/twilio/status"
    return form, TwilioSignatureValidator(auth_token).sign(url, form)


async def test_completed_callback_at_another_gateway_leaves_the_call_to_its_own(
    mongo_url: str, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_webhook_receiver() as receiver:
        env: dict[str, str | None] = {
            "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
            "WEBHOOK_RETRY_BASE_S": "0.2",
        }
        with run_gateway(mongo_url, tmp_path / "a", env) as serving:
            same = {
                **env,
                "MONGODB_DB": serving.db_name,
                "TWILIO_AUTH_TOKEN": serving.auth_token,
                "GATEWAY_API_KEY": serving.api_key,
            }
            with run_gateway(mongo_url, tmp_path / "b", same) as other:
                # The balancer hands Twilio's `completed` to the other gateway.
                sent, stored = await _completed_during_a_reply(serving, other, receiver)
    said = [(t["speaker"], t["text"]) for t in sent["transcript"]]
    assert said == [(t["speaker"], t["text"]) for t in stored["transcript"]]
    assert [s for s, _ in said] == ["agent", "caller", "agent", "caller", "agent"], said
    # The gateway that served the stream finished it, with what it saw.
    assert (sent["status"], sent["end_reason"]) == ("completed", "caller-hung-up")
    assert (stored["status"], stored["end_reason"]) == ("completed", "caller-hung-up")


async def test_the_carrier_end_and_a_retried_turn_are_each_stored_once(
    database: Database,
) -> None:
    calls = database.calls
    call = await calls.create_call(
        NewCall(
            org_id=None, transport="twilio", call_sid="CA1", from_number="+15550001111",
            to_number="+15550002222", direction=Direction.INBOUND,
        ),
        started_at=datetime.now(UTC),
    )  # fmt: skip
    at = datetime.now(UTC)
    await calls.record_carrier_end(
        call.id, status=CallStatus.COMPLETED, reason="twilio-completed", at=at
    )
    await calls.record_carrier_end(call.id, status=CallStatus.BUSY, reason="twilio-busy", at=at)
    assert await calls.carrier_end(call.id) == (CallStatus.COMPLETED, "twilio-completed")
    assert await calls.carrier_end("nope") is None
    # A turn whose insert landed but whose answer was lost is tried again: stored once.
    turn_id = new_turn_id()
    first = await calls.add_turn(
        call.id, speaker="caller", text="hi", start_ms=0, end_ms=1, turn_id=turn_id,
        first_attempt=True,
    )  # fmt: skip
    again = await calls.add_turn(
        call.id, speaker="caller", text="hi", start_ms=0, end_ms=1, turn_id=turn_id
    )
    after = await calls.add_turn(call.id, speaker="agent", text="hello", start_ms=2, end_ms=3)
    assert first.id == again.id == turn_id and first.index == again.index == 0
    stored = await calls.get_call(call.id)
    assert [(t.index, t.text) for t in stored.turns] == [(0, "hi"), (1, "hello")]
    assert after.index == 1
