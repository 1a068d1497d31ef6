"""Admission control against a real gateway process bounded to two live calls
(MAX_LIVE_CALLS=2): two simulated Twilio callers talk to the agent; a third call is
answered `<Reject reason="busy"/>`, stored busy/gateway-full and counted; an outbound
call is refused 503 with Retry-After and placed once there is room again; the two live
calls finish normally with their transcripts. A LiveKit SIP dispatch to a full gateway is
left for another gateway, and hung up (stored busy/gateway-full) when none takes it; under
`serve --workers 2` a dispatch refused by a full worker is taken by the other one. A
gateway whose database falls behind its calls' writes (its FerretDB stopped with SIGSTOP)
refuses new calls until the writes are stored, and its live call loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from livekit import api as lkapi

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from telephony.twilio import TwilioSignatureValidator
from tests.ferretdb_server import embedded_ferretdb
from tests.livekit_caller import RoomCaller, caller_token, dispatch_attributes, espeak_pcm16k
from tests.livekit_server import run_livekit_server, signed_webhook
from tests.net import free_port

from .conftest import FakeServer, GatewayProcess, run_gateway, run_room_stack

pytestmark = pytest.mark.timeout(180)

TWILIO_ACCOUNT = "AC" + "1" * 32
OUR_NUMBER = "+15557770001"


@pytest.fixture(scope="module")
def bounded_gateway(
    mongo_url: str, twilio_fake: FakeServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        "MAX_LIVE_CALLS": "2",
        # The lag bound is the unit tests' (an injected clock): a loaded CI machine must not
        # make this test about it.
        "MAX_LOOP_LAG_MS": "10000",
        "ADMISSION_RETRY_AFTER_S": "7",
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "VAD_SILENCE_MS": "400",
        "MAX_PENDING_STREAMS": "3",
        "STREAM_IDLE_TIMEOUT_S": "2",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("admission"), env) as gateway:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=gateway.auth_token)
        yield gateway


def _call(gateway: GatewayProcess) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )


async def _voice_webhook(http: httpx.AsyncClient, gateway: GatewayProcess, call_sid: str) -> str:
    """POST Twilio's signed voice webhook for a new inbound call; the TwiML answered."""
    form = {
        "AccountSid": TWILIO_ACCOUNT,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+15550003333",
        "To": "+15550002222",
    }
    url = gateway.base_url + "/twilio/voice"
    signature = TwilioSignatureValidator(gateway.auth_token).sign(url, form)
    answer = await http.post(url, data=form, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200, answer.text
    return answer.text


async def _stored_by_sid(
    http: httpx.AsyncClient, key: str, call_sid: str, within_s: float = 30
) -> dict[str, Any]:
    """The stored call of `call_sid` once it is listed (stored after the answer went)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        items = (await http.get("/calls", headers={"x-api-key": key})).json()["items"]
        found = [c for c in items if c["call_sid"] == call_sid]
        if found:
            return dict(found[0])
        assert asyncio.get_running_loop().time() < deadline, f"{call_sid} was never stored"
        await asyncio.sleep(0.1)


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


async def _talk(call: SimulatedTwilioCall, question: bytes) -> None:
    await call.wait_agent_silent()
    call.say(question)
    await call.wait_said()
    await call.wait_agent_audio(within_s=20)
    await call.wait_agent_silent()


async def test_a_full_gateway_refuses_new_calls_and_keeps_its_live_ones(
    bounded_gateway: GatewayProcess, twilio_fake: FakeServer
) -> None:
    gateway = bounded_gateway
    key = gateway.api_key
    headers = {"x-api-key": key}
    question = espeak_mulaw("What are your opening hours?")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as http:
        registered = await http.post("/numbers", headers=headers, json={"number": OUR_NUMBER})
        assert registered.status_code == 201, registered.text
        assistant = await http.post(
            "/assistants",
            headers=headers,
            json={
                "name": "Outbound",
                "system_prompt": "Be brief.",
                "greeting": "Hello, this is the outbound assistant.",
                "phone_numbers": [OUR_NUMBER],
            },
        )
        assert assistant.status_code == 201, assistant.text
        outbound = {
            "assistant_id": assistant.json()["id"],
            "to_number": "+15558880002",
            "from_number": OUR_NUMBER,
            "call_service": "twilio",
        }

        live = [_call(gateway), _call(gateway)]
        try:
            for call in live:
                await call.start(http)
            for call in live:
                await call.wait_agent_audio(within_s=20)  # both greeted: both live

            # A third call: refused at once, as Twilio understands it (a busy tone).
            refused_sid = "CA" + secrets.token_hex(16)
            twiml = await _voice_webhook(http, gateway, refused_sid)
            reject = ET.fromstring(twiml).find("./Reject")
            assert reject is not None and reject.attrib == {"reason": "busy"}, twiml
            assert ET.fromstring(twiml).find("./Connect") is None

            # An outbound call: 503 with Retry-After, nothing placed.
            full = await http.post("/call/outbound", json=outbound, headers=headers)
            assert full.status_code == 503, full.text
            assert full.headers["retry-after"] == "7"
            assert full.json()["error"]["code"] == "gateway_full"
            assert not [e for e in twilio_fake.log() if e.get("method") == "POST"]

            # The live calls go on, answered as usual, while the refusals are handled.
            await asyncio.gather(*(_talk(call, question) for call in live))
            for call in live:
                await call.stop()
        finally:
            for call in live:
                await call.aclose()

        stored = await _stored_by_sid(http, key, refused_sid)
        assert stored["status"] == "busy"
        assert stored["end_reason"] == "gateway-full"
        assert stored["direction"] == "inbound"

        metrics = (await http.get("/metrics")).text
        prefix = "voice_gateway_calls_refused_total"
        assert _metric(metrics, f'{prefix}{{arrival="twilio",cause="live-calls"}}') == 1
        assert _metric(metrics, f'{prefix}{{arrival="outbound",cause="live-calls"}}') == 1
        assert "voice_gateway_event_loop_lag_ms " in metrics

        for call in live:
            assert call.call_id is not None
            done = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()
            assert done["status"] == "completed", done
            assert done["end_reason"] == "caller-hung-up"
            speakers = [t["speaker"] for t in done["transcript"]]
            assert speakers[0] == "agent" and "caller" in speakers
            assert speakers.count("agent") >= 2  # the greeting and the answer

        # Once the live calls are finished there is room again: the outbound call is placed.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            placed = await http.post("/call/outbound", json=outbound, headers=headers)
            if placed.status_code != 503:
                break
            assert asyncio.get_running_loop().time() < deadline, "no room after the calls"
            await asyncio.sleep(0.1)
        assert placed.status_code == 201, placed.text

    log_text = gateway.log_text()
    refusals = [line for line in log_text.splitlines() if "call refused" in line]
    assert any(refused_sid in line and "live-calls" in line for line in refusals)


async def _transcript(http: httpx.AsyncClient, key: str, call_id: str) -> list[dict[str, Any]]:
    got = await http.get(f"/calls/{call_id}", headers={"x-api-key": key})
    return list(got.json()["transcript"])


async def _write_backlog_ms(http: httpx.AsyncClient) -> float:
    return _metric((await http.get("/metrics")).text, "voice_gateway_write_backlog_ms")


async def test_a_database_behind_the_calls_writes_refuses_new_calls_and_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The gateway's own FerretDB is stopped (SIGSTOP) while a live call talks: the call goes
    on, its turns wait in its write queue, and once the oldest has waited MAX_WRITE_WAIT_MS a
    new Twilio call is refused busy (cause write-backlog). When the database runs again the
    writes are stored, new calls are served again, and the live call's transcript is whole."""
    work = tmp_path_factory.mktemp("admission-db")
    env: dict[str, str | None] = {
        "MAX_LIVE_CALLS": "10",
        "MAX_LOOP_LAG_MS": "10000",
        "MAX_WRITE_WAIT_MS": "300",
        "VAD_SILENCE_MS": "400",
    }
    question = espeak_mulaw("What are your opening hours?")
    with embedded_ferretdb(work / "db") as database:
        assert database.pid is not None
        with run_gateway(database.url, work, env) as gateway:
            key = gateway.api_key
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
                live = _call(gateway)
                try:
                    await live.start(http)
                    await live.wait_agent_audio(within_s=20)
                    await live.wait_agent_silent()
                    os.kill(database.pid, signal.SIGSTOP)
                    try:
                        live.say(question)  # its turns are written while the database sleeps
                        await live.wait_said()
                        deadline = asyncio.get_running_loop().time() + 20
                        while await _write_backlog_ms(http) <= 300:
                            assert asyncio.get_running_loop().time() < deadline, "no backlog"
                            await asyncio.sleep(0.05)
                        refused_sid = "CA" + secrets.token_hex(16)
                        twiml = await _voice_webhook(http, gateway, refused_sid)
                    finally:
                        os.kill(database.pid, signal.SIGCONT)
                    reject = ET.fromstring(twiml).find("./Reject")
                    assert reject is not None and reject.attrib == {"reason": "busy"}, twiml

                    # The database runs again: the writes are stored (the caller's question
                    # and the agent's answer among them) and calls are taken again.
                    assert live.call_id is not None
                    deadline = asyncio.get_running_loop().time() + 30
                    while len(await _transcript(http, key, live.call_id)) < 3:
                        assert asyncio.get_running_loop().time() < deadline, "turns not stored"
                        await asyncio.sleep(0.1)
                    while await _write_backlog_ms(http) > 0:
                        assert asyncio.get_running_loop().time() < deadline, "still behind"
                        await asyncio.sleep(0.05)
                    await live.wait_agent_silent()
                    await _served_when_caught_up(gateway, http)
                    await live.stop()
                finally:
                    await live.aclose()

                stored = await _stored_by_sid(http, key, refused_sid)
                assert (stored["status"], stored["end_reason"]) == ("busy", "gateway-full")
                assert live.call_id is not None
                deadline = asyncio.get_running_loop().time() + 30
                while True:
                    done = (
                        await http.get(f"/calls/{live.call_id}", headers={"x-api-key": key})
                    ).json()
                    if done["status"] == "completed":
                        break
                    assert asyncio.get_running_loop().time() < deadline, done
                    await asyncio.sleep(0.1)
                turns = done["transcript"]
                assert [t["speaker"] for t in turns[:3]] == ["agent", "caller", "agent"], turns
                assert turns[1]["text"] and turns[2]["text"], turns  # stored once it ran again
                metrics = (await http.get("/metrics")).text
                prefix = "voice_gateway_calls_refused_total"
                assert _metric(metrics, f'{prefix}{{arrival="twilio",cause="write-backlog"}}') == 1
        log_text = gateway.log_text()
        refusals = [line for line in log_text.splitlines() if "call refused" in line]
        assert any(refused_sid in line and "write-backlog" in line for line in refusals)
        assert "not stored:" not in log_text  # every write of the live call was stored


async def _served_when_caught_up(gateway: GatewayProcess, http: httpx.AsyncClient) -> None:
    """A new call is served once the database has caught up: tried until it is admitted
    (the writes that follow the pause may still be slow on a loaded machine), then greeted."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        later = _call(gateway)
        try:
            try:
                await later.start(http)
            except RuntimeError as exc:  # <Reject>: still behind for a moment
                assert "Reject" in str(exc), exc
                assert asyncio.get_running_loop().time() < deadline, "never admitted again"
                await asyncio.sleep(0.5)
                continue
            await later.wait_agent_audio(within_s=20)
            await later.stop()
            return
        finally:
            await later.aclose()


async def _signed_socket(gateway: GatewayProcess) -> websockets.ClientConnection:
    url = gateway.base_url.replace("http", "ws") + "/twilio/stream"
    signature = TwilioSignatureValidator(gateway.auth_token).sign(url, {})
    return await websockets.connect(url, additional_headers={"X-Twilio-Signature": signature})


async def test_sockets_waiting_for_start_are_bounded_and_idle_streams_closed(
    bounded_gateway: GatewayProcess,
) -> None:
    """MAX_PENDING_STREAMS=3: a fourth signed upgrade without `start` is refused before
    accept, and a slot is free again once a waiting socket goes. A started stream that
    then sends nothing is closed after STREAM_IDLE_TIMEOUT_S=2, its call `stream-idle`."""
    gateway = bounded_gateway
    waiting = [await _signed_socket(gateway) for _ in range(3)]
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await _signed_socket(gateway)
        assert refused.value.response.status_code == 403
        await waiting.pop().close()
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # the gateway frees the slot once it has seen the close
            try:
                waiting.append(await _signed_socket(gateway))
                break
            except websockets.InvalidStatus:
                assert asyncio.get_running_loop().time() < deadline, "the slot stayed taken"
                await asyncio.sleep(0.1)
    finally:
        for socket in waiting:
            await socket.close()

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as http:
        call = _call(gateway)
        _, params = await call.answer(http)
        socket = await _signed_socket(gateway)
        try:
            start = {
                "accountSid": call.account_sid,
                "streamSid": call.stream_sid,
                "callSid": call.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": params,
            }
            message = {"event": "start", "sequenceNumber": "1", "start": start}
            await socket.send(json.dumps({**message, "streamSid": call.stream_sid}))
            with pytest.raises(websockets.ConnectionClosed):
                while True:  # the greeting's frames, then the close
                    await asyncio.wait_for(socket.recv(), 30)
            assert socket.close_code == 1008 and socket.close_reason == "no media"
        finally:
            await socket.close()
        assert call.call_id is not None
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            stored = (
                await http.get(f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key})
            ).json()
            if stored["ended_at"]:
                break
            assert asyncio.get_running_loop().time() < deadline, "the idle call never ended"
            await asyncio.sleep(0.1)
        assert (stored["status"], stored["end_reason"]) == ("failed", "stream-idle")
        metrics = (await http.get("/metrics")).text
    assert _metric(metrics, "voice_gateway_streams_refused_total") >= 1
    assert _metric(metrics, "voice_gateway_streams_idle_total") == 1


async def test_a_full_gateway_leaves_a_livekit_dispatch_then_hangs_it_up(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One live SIP room call, holding LIVEKIT_CALL_WEIGHT (4) of MAX_LIVE_CALLS=4 places:
    a second SIP caller's dispatch is refused 503 + Retry-After (LiveKit retries it), and so
    is an outbound call (one place); no other gateway takes the dispatch, so after the grace
    the refusing gateway stores it busy/gateway-full and closes its room (the caller is hung
    up); the first call goes on and is answered."""
    work = tmp_path_factory.mktemp("admission-lk")
    env: dict[str, str | None] = {
        "MAX_LIVE_CALLS": "4",
        "MAX_LOOP_LAG_MS": "10000",
        "LIVEKIT_DISPATCH_GRACE_S": "2",
        "VAD_SILENCE_MS": "500",
    }
    with run_room_stack(mongo_url, work, env) as (gateway, server):
        key = gateway.api_key
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
            assistant_id, rule_attributes = await dispatch_attributes(
                http,
                key,
                server.url,
                server.api_key,
                server.api_secret,
                {"name": "Rooms", "system_prompt": "Be brief.", "greeting": "Hello from rooms."},
                ["+15557770001"],
            )
            ws_url = server.url.replace("http://", "ws://")
            callers: list[RoomCaller] = []

            async def sip_caller(room: str) -> RoomCaller:
                attributes = {
                    **rule_attributes,
                    "sip.phoneNumber": "+15550001111",
                    "sip.trunkPhoneNumber": "+15557770001",
                    "sip.callID": "SCL_" + secrets.token_hex(4),
                }
                caller = RoomCaller()
                callers.append(caller)
                token = caller_token(server.api_key, server.api_secret, room, "sip", attributes)
                await caller.join(ws_url, token)
                return caller

            first_room, second_room = "call-" + secrets.token_hex(4), "call-" + secrets.token_hex(4)
            try:
                first = await sip_caller(first_room)
                await first.wait_agent_audio(within_s=30)
                await first.wait_agent_silent()

                second = await sip_caller(second_room)
                # Hung up by the refusing gateway once the grace is over.
                await asyncio.wait_for(second.left.wait(), 60)
                refused = await _stored_in_room(http, key, second_room)
                assert refused["status"] == "busy"
                assert refused["end_reason"] == "gateway-full"
                assert refused["transport"] == "livekit"
                metrics = (await http.get("/metrics")).text
                prefix = "voice_gateway_calls_refused_total"
                assert _metric(metrics, f'{prefix}{{arrival="livekit",cause="live-calls"}}') >= 1
                # The room's four places are all there are: an outbound call does not fit.
                outbound = {"assistant_id": assistant_id, "to_number": "+15550002222"}
                full = await http.post("/call/outbound", headers={"x-api-key": key}, json=outbound)
                assert full.status_code == 503, full.text
                assert full.json()["error"]["code"] == "gateway_full"
                assert int(full.headers["retry-after"]) >= 1

                # The live call never noticed.
                first.say(espeak_pcm16k("What are your opening hours?"))
                await first.wait_said()
                await first.wait_agent_audio(within_s=20)
                await first.wait_agent_silent()
                assert not first.left.is_set()
            finally:
                for caller in callers:
                    await caller.leave()
            answered = await _stored_in_room(http, key, first_room)
            assert answered["status"] in ("in-progress", "completed")
        lines = gateway.log_text().splitlines()
        assert any("call refused" in line and second_room in line for line in lines)


async def _stored_in_room(
    http: httpx.AsyncClient, key: str, room: str, within_s: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        items = (await http.get("/calls", headers={"x-api-key": key})).json()["items"]
        found = [c for c in items if c["metadata"].get("room") == room]
        if found:
            return dict(found[0])
        assert asyncio.get_running_loop().time() < deadline, f"no call stored for {room}"
        await asyncio.sleep(0.1)


async def _post_to_worker(
    gateway: GatewayProcess, worker: int, body: bytes, auth: str
) -> httpx.Response:
    """POST a signed LiveKit webhook to worker `worker` of `serve --workers N`: on a
    connection whose `/health` that worker answered (each new one goes to any worker)."""
    headers = {"Authorization": auth, "Content-Type": "application/webhook+json"}
    for _ in range(500):
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30, limits=limits) as http:
            if (await http.get("/health")).json().get("worker") == worker:
                return await http.post("/livekit/webhook", content=body, headers=headers)
    raise AssertionError(f"worker {worker} took none of 500 connections")


async def test_a_dispatch_a_full_worker_refuses_is_taken_by_the_other_worker(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`serve --workers 2`, one room a worker (MAX_LIVE_CALLS=4, LIVEKIT_CALL_WEIGHT=4).
    livekit-server's webhooks go nowhere: the test delivers them, signed as it does, each to
    a chosen worker, and never retries. The first SIP caller's dispatch goes to worker 0,
    which serves it; the second's goes to worker 0 too, which is full: 503. Worker 0 offers
    it on the port again until worker 1 takes it, long before the grace is over: the second
    caller is greeted, its call is served by worker 1 (not stored busy), and the refusal is
    counted once however often worker 0 was offered it again or LiveKit retried it there."""
    work = tmp_path_factory.mktemp("handoff")
    nowhere = f"http://127.0.0.1:{free_port()}/livekit/webhook"
    with run_livekit_server(work, webhook_url=nowhere) as server:
        env: dict[str, str | None] = {
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "MAX_LIVE_CALLS": "4",
            "LIVEKIT_CALL_WEIGHT": "4",
            "LIVEKIT_DISPATCH_GRACE_S": "120",
        }
        with run_gateway(mongo_url, work, env, workers=2) as gateway:
            key = gateway.api_key
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
                _, rule_attributes = await dispatch_attributes(
                    http,
                    key,
                    server.url,
                    server.api_key,
                    server.api_secret,
                    {"name": "Rooms", "system_prompt": "Be brief.", "greeting": "Hello there."},
                    ["+15557770002"],
                )
                ws_url = server.url.replace("http://", "ws://")
                callers: list[RoomCaller] = []
                sent: dict[str, tuple[bytes, str]] = {}  # each event's body and Authorization

                async def dispatched(to_worker: int) -> tuple[str, str, httpx.Response]:
                    """A SIP caller in a new room, and its dispatch sent to `to_worker`."""
                    room, identity = "call-" + secrets.token_hex(4), "sip_" + secrets.token_hex(3)
                    attributes = {
                        **rule_attributes,
                        "sip.phoneNumber": "+15550003333",
                        "sip.trunkPhoneNumber": "+15557770002",
                        "sip.callID": "SCL_" + secrets.token_hex(4),
                    }
                    caller = RoomCaller()
                    callers.append(caller)
                    token = caller_token(
                        server.api_key, server.api_secret, room, identity, attributes
                    )
                    await caller.join(ws_url, token)
                    event = lkapi.WebhookEvent(
                        event="participant_joined",
                        id="EV_" + secrets.token_hex(6),
                        room=lkapi.Room(name=room),
                        participant=lkapi.ParticipantInfo(
                            identity=identity,
                            kind=lkapi.ParticipantInfo.Kind.SIP,
                            attributes=attributes,
                        ),
                    )
                    body, auth = signed_webhook(server, event)
                    sent[event.id] = (body, auth)
                    return room, event.id, await _post_to_worker(gateway, to_worker, body, auth)

                try:
                    _, first_event, answer = await dispatched(0)
                    assert answer.status_code == 200, answer.text
                    await callers[0].wait_agent_audio(within_s=30)

                    second_room, second_event, answer = await dispatched(0)
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"]["code"] == "gateway_full"
                    await callers[1].wait_agent_audio(within_s=60)
                    served = await _stored_in_room(http, key, second_room)
                    assert served["status"] == "in-progress", served
                    # LiveKit retries what it was refused; worker 0, still full, refuses again
                    # without counting the call again.
                    again = await _post_to_worker(gateway, 0, *sent[second_event])
                    assert again.status_code == 503, again.text
                    assert not callers[0].left.is_set()
                finally:
                    for caller in callers:
                        await caller.leave()

                async def counted() -> float:
                    metrics = (await http.get("/metrics")).text
                    prefix = "voice_gateway_calls_refused_total"
                    return _metric(metrics, f'{prefix}{{arrival="livekit",cause="live-calls"}}')

                # Each refusal is logged as it is counted, before its 503 is answered: the
                # log is complete now. The metric comes from each worker's publication (every
                # second): it reaches the one count, and shows no more.
                refusals = [
                    line
                    for line in gateway.log_text().splitlines()
                    if "call refused" in line and second_room in line
                ]
                assert len(refusals) == 1, refusals
                deadline = asyncio.get_running_loop().time() + 30
                while await counted() < 1:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.2)
                assert await counted() == 1
        lines = [json.loads(line) for line in gateway.log_text().splitlines() if line[:1] == "{"]
        acted: dict[str, list[int]] = {}
        for line in lines:
            if line.get("msg") == "livekit event":
                acted.setdefault(line["event_id"], []).append(line["worker"])
        # Each acted on once, the second by the worker that did not refuse it.
        assert (acted[first_event], acted[second_event]) == ([0], [1]), acted
        taken = [
            line for line in lines if line.get("msg") == "refused dispatch taken when offered again"
        ]
        # For the refusal, and maybe for the retry too (an offer told the call is served).
        assert {(line["worker"], line["room"]) for line in taken} == {(0, second_room)}, taken
        assert 1 <= len(taken) <= 2, taken
        assert not any("refused by every gateway" in line.get("msg", "") for line in lines)
