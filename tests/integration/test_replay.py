"""Replays against two gateway processes on one database, as behind a balancer: a captured
stream token used again (a second socket while the call is live, or after hang-up, on
either gateway) and a captured `POST /twilio/voice` sent again after hang-up. Each is
refused, logged, and changes nothing stored: no turn, no status, no recording rewritten
(the recording is a real object on moto's S3 server)."""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from storage import CallStatus, ClaimRepository, Database, Direction, NewCall
from telephony.twilio import stream_url_for
from tests.s3_server import S3Server

from .conftest import GatewayProcess, run_gateway
from .test_recorded_calls import new_bucket, recording_env

pytestmark = pytest.mark.timeout(240)

GREETING = "Hello! You are talking to the demo assistant."


class _Pair:
    """Gateways `a` and `b` on one database, one Twilio auth token and one API key."""

    def __init__(self, a: GatewayProcess, b: GatewayProcess, s3: S3Server, bucket: str) -> None:
        self.a, self.b, self.s3, self.bucket = a, b, s3, bucket
        self.token = a.auth_token
        self.headers = {"x-api-key": a.api_key}


@pytest.fixture(scope="module")
def pair(
    mongo_url: str, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Pair]:
    bucket = new_bucket(s3_server)
    env: dict[str, str | None] = {
        **recording_env(s3_server, bucket),
        "MONGODB_DB": "replay_" + uuid.uuid4().hex[:8],
        # Long enough that every refusal below is for reuse, never for expiry (expiry has
        # its unit test): a token used again within its lifetime is the replay to stop.
        "STREAM_TOKEN_TTL_S": "300",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("replay-a"), env) as a:
        # Behind one balancer: one public URL, so Twilio's signatures hold at either gateway.
        shared = {
            **env,
            "TWILIO_AUTH_TOKEN": a.auth_token,
            "GATEWAY_API_KEY": a.api_key,
            "PUBLIC_URL": a.base_url,
        }
        with run_gateway(mongo_url, tmp_path_factory.mktemp("replay-b"), shared) as b:
            yield _Pair(a, b, s3_server, bucket)


def _phone(pair: _Pair) -> SimulatedTwilioCall:
    a = pair.a
    return SimulatedTwilioCall(base_url=a.base_url, public_url=a.base_url, auth_token=pair.token)


async def _replayed_stream(
    pair: _Pair, gateway: GatewayProcess, phone: SimulatedTwilioCall, params: dict[str, str]
) -> tuple[int | None, str, bool]:
    """Open another signed socket to `gateway` and send `phone`'s `start` with `params` (the
    captured token) again; (close code, close reason, whether the gateway served it)."""
    public = pair.a.base_url
    again = SimulatedTwilioCall(base_url=gateway.base_url, public_url=public, auth_token=pair.token)
    again.call_sid, again.account_sid = phone.call_sid, phone.account_sid
    await again.connect(stream_url_for(public), params)
    served = False
    try:
        await again.wait_closed(within_s=15)
    except TimeoutError:
        served = True  # the gateway took the stream: hang it up as Twilio would
        await again.stop()
    finally:
        await again.aclose()
    return again.log.close_code, again.log.close_reason, served


async def _stored(pair: _Pair, http: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    response = await http.get(f"{pair.a.base_url}/calls/{call_id}", headers=pair.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _recorded(pair: _Pair, http: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    """The stored call once its recording is complete."""
    deadline = time.monotonic() + 60
    while True:
        stored = await _stored(pair, http, call_id)
        recording = stored.get("recording") or {}
        if stored["ended_at"] and recording.get("status") == "complete":
            return stored
        assert time.monotonic() < deadline, f"recording never completed: {stored}"
        await asyncio.sleep(0.2)


def _object_size(pair: _Pair, key: str) -> int:
    head = pair.s3.client().head_object(Bucket=pair.bucket, Key=key)
    return int(head["ContentLength"])


async def _logged(gateway: GatewayProcess, *needles: str, within_s: float = 20.0) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for line in gateway.log_text().splitlines():
            if all(n in line for n in needles):
                return line
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway never logged {needles}")


def _unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    turns = [t["text"] for t in before["transcript"]], [t["text"] for t in after["transcript"]]
    assert turns[1] == turns[0], f"turns before {turns[0]}, after {turns[1]}"
    assert after["transcript"] == before["transcript"]
    for field in ("status", "end_reason", "ended_at", "duration_s", "stream_sid", "recording"):
        assert after[field] == before[field], (field, before[field], after[field])


async def _greeted_then_hung_up(pair: _Pair, http: httpx.AsyncClient) -> SimulatedTwilioCall:
    """A call on gateway `a`: the greeting, one question answered, then the caller hangs up."""
    phone = _phone(pair)
    await phone.start(http)
    try:
        await phone.wait_agent_audio(within_s=20)
        await phone.wait_agent_silent()
        phone.say(espeak_mulaw("What are your opening hours?"))
        await phone.wait_said()
        await phone.wait_agent_audio(within_s=20)
        await phone.wait_agent_silent()
        await phone.stop()
    finally:
        await phone.aclose()
    assert phone.log.close_code == 1000
    return phone


async def test_a_second_socket_with_a_live_calls_token_is_refused_on_either_gateway(
    pair: _Pair,
) -> None:
    async with httpx.AsyncClient(base_url=pair.a.base_url, timeout=20) as http:
        phone = _phone(pair)
        stream_url, params = await phone.answer(http)
        await phone.connect(stream_url, params)
        try:
            await phone.wait_agent_audio(within_s=20)
            # The same token on a second socket, at the other gateway and at this one.
            for gateway in (pair.b, pair.a):
                code, reason, served = await _replayed_stream(pair, gateway, phone, params)
                assert not served, f"{gateway.base_url} served a second stream for the call"
                assert code == 1008 and reason, (code, reason)
                await _logged(gateway, "media stream refused", phone.call_sid)
            # The first stream goes on: a question is answered, then the caller hangs up.
            await phone.wait_agent_silent()
            phone.say(espeak_mulaw("What are your opening hours?"))
            await phone.wait_said()
            await phone.wait_agent_audio(within_s=20)
            await phone.wait_agent_silent()
            await phone.stop()
        finally:
            await phone.aclose()
        assert phone.log.close_code == 1000
        assert phone.call_id is not None
        stored = await _recorded(pair, http, phone.call_id)
    assert stored["status"] == "completed" and stored["end_reason"] == "caller-hung-up"
    assert stored["stream_sid"] == phone.stream_sid
    greetings = [t for t in stored["transcript"] if t["text"].startswith(GREETING)]
    assert len(greetings) == 1, stored["transcript"]


async def test_a_stream_token_used_again_after_hang_up_changes_nothing(pair: _Pair) -> None:
    async with httpx.AsyncClient(base_url=pair.a.base_url, timeout=20) as http:
        phone = _phone(pair)
        stream_url, params = await phone.answer(http)
        await phone.connect(stream_url, params)
        try:
            await phone.wait_agent_audio(within_s=20)
            await phone.wait_agent_silent()
            await phone.stop()
        finally:
            await phone.aclose()
        assert phone.call_id is not None
        before = await _recorded(pair, http, phone.call_id)
        size = _object_size(pair, before["recording"]["key"])
        assert size == before["recording"]["size_bytes"]

        for gateway in (pair.a, pair.b):
            code, reason, served = await _replayed_stream(pair, gateway, phone, params)
            assert not served, f"{gateway.base_url} served a stream for an ended call"
            assert code == 1008 and reason, (code, reason)
            await _logged(gateway, "media stream refused", phone.call_sid)
        after = await _recorded(pair, http, phone.call_id)
    assert _object_size(pair, before["recording"]["key"]) == size
    _unchanged(before, after)


async def test_a_replayed_voice_webhook_after_hang_up_offers_no_stream(pair: _Pair) -> None:
    captured: list[httpx.Request] = []

    async def capture(request: httpx.Request) -> None:
        if request.url.path == "/twilio/voice":
            captured.append(request)

    async with httpx.AsyncClient(
        base_url=pair.a.base_url, timeout=20, event_hooks={"request": [capture]}
    ) as http:
        phone = await _greeted_then_hung_up(pair, http)
        assert phone.call_id is not None
        before = await _recorded(pair, http, phone.call_id)
        size = _object_size(pair, before["recording"]["key"])

        # The captured request, byte for byte, to each gateway.
        [request] = captured
        offered: list[str] = []
        for gateway in (pair.a, pair.b):
            answer = await http.post(
                gateway.base_url + "/twilio/voice",
                content=request.content,
                headers={
                    "Content-Type": request.headers["content-type"],
                    "X-Twilio-Signature": request.headers["x-twilio-signature"],
                },
            )
            assert answer.status_code == 200, answer.text
            twiml = ET.fromstring(answer.text)
            stream = twiml.find("./Connect/Stream")
            if stream is not None:  # a token was issued: use it as the attacker would
                offered.append(gateway.base_url)
                params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
                await _replayed_stream(pair, gateway, phone, params)
            else:
                assert twiml.find("./Hangup") is not None, answer.text
                await _logged(gateway, "voice webhook replayed", phone.call_sid)
        after = await _recorded(pair, http, phone.call_id)
    assert _object_size(pair, before["recording"]["key"]) == size, (
        f"recording was {size} B, now {_object_size(pair, before['recording']['key'])} B"
    )
    _unchanged(before, after)
    assert not offered, f"stream tokens issued for an ended call by {offered}"


async def test_a_finished_call_keeps_its_outcome_whatever_callbacks_follow(
    database: Database,
) -> None:
    calls = database.calls
    call = await calls.create_call(
        NewCall(
            org_id=None,
            transport="twilio",
            call_sid="CA" + uuid.uuid4().hex,
            from_number="+15550001111",
            to_number="+15550002222",
            direction=Direction.OUTBOUND,
        ),
        started_at=datetime.now(UTC),
    )
    await calls.set_status(call.id, CallStatus.IN_PROGRESS)
    await calls.set_answered_by(call.id, "human")
    finished = await calls.finish_call(
        call.id,
        status=CallStatus.COMPLETED,
        end_reason="caller-hung-up",
        ended_at=datetime.now(UTC),
    )
    # Callbacks replayed afterwards (a progress status, another AMD answer, another end).
    await calls.set_status(call.id, CallStatus.RINGING)
    await calls.set_status(call.id, CallStatus.IN_PROGRESS)
    await calls.set_answered_by(call.id, "machine_start")
    await calls.finish_call(
        call.id, status=CallStatus.BUSY, end_reason="twilio-busy", ended_at=datetime.now(UTC)
    )
    assert await calls.get_call(call.id) == finished


async def test_a_claim_is_won_once_among_racing_gateways_and_expires(database: Database) -> None:
    now = datetime.now(UTC)
    # Two gateways' repositories racing on one database: the unique `_id` picks one winner.
    gateways = [ClaimRepository(), ClaimRepository()]
    call_id = uuid.uuid4().hex
    won = await asyncio.gather(
        *(
            repo.claim_stream(
                call_id, call_sid="CA1", stream_sid=f"MZ{i}", token_nonce=f"n{i}", now=now
            )
            for i, repo in enumerate(gateways * 5)
        )
    )
    assert sorted(won) == [False] * 9 + [True]
    assert await gateways[1].stream_claimed(call_id)
    assert not await gateways[1].stream_claimed(uuid.uuid4().hex)

    event_id = "EV_" + uuid.uuid4().hex
    racing = [
        repo.claim_event(event_id, event="room_finished", now=now, keep_until=now)
        for repo in gateways * 5
    ]
    assert sorted(await asyncio.gather(*racing)) == [False] * 9 + [True]
    # Acting on it failed: given back, the retry wins it again.
    await gateways[0].release_event(event_id)
    assert await gateways[1].claim_event(event_id, event="x", now=now, keep_until=now)

    # Expired claims go only with the background pruning, never on a claim's path (a scan
    # on FerretDB that a caller's greeting would wait on).
    repo = ClaimRepository()
    old = "EV_" + uuid.uuid4().hex
    assert await repo.claim_event(old, event="x", now=now, keep_until=now + timedelta(seconds=5))
    assert not await repo.claim_event(old, event="x", now=now, keep_until=now)
    later = now + timedelta(minutes=2)
    other = "EV_" + uuid.uuid4().hex
    assert await repo.claim_event(other, event="x", now=later, keep_until=later)
    assert not await repo.claim_event(old, event="x", now=later, keep_until=later)
    await database.claims.prune_expired(later)
    assert await repo.claim_event(old, event="x", now=later, keep_until=later)
    assert not await repo.claim_event(other, event="x", now=later, keep_until=later)
