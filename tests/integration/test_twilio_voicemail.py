"""Voicemail on Twilio, end to end: a real gateway process on the real database places
outbound calls through the `twilio` SDK to the Twilio REST fake, whose scripted callees
answer by themselves (a person saying "Hello?", an answering machine with a greeting and
a beep, busy, no answer, failed) over Media Streams, with Twilio's asynchronous
answering-machine detection posted signed to `/twilio/amd` when Twilio would post it.
Embedded providers (offline STT, espeak-ng, the local agent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.integration.conftest import FakeServer, GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(240)

TWILIO_ACCOUNT = "AC" + "0" * 32
FROM = "+15557770100"
MACHINE, MACHINE_TOO, HUMAN = "+15550100001", "+15550100002", "+15550100003"
BUSY, NO_ANSWER, FAILED = "+15550100004", "+15550100005", "+15550100006"
MESSAGE = "Hi {{customer}}, this is Acme about your visit on {{day}}. Please call us back."


@pytest.fixture(scope="module")
def stack(
    mongo_url: str, twilio_fake: FakeServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "VAD_SILENCE_MS": "400",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("voicemail"), env) as gateway:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=gateway.auth_token)
        numbers = {
            MACHINE: {"answer": "machine", "beep_hz": 1000, "beep_ms": 500},
            MACHINE_TOO: {"answer": "machine"},
            HUMAN: {"answer": "human", "talk_s": 12},
            BUSY: {"answer": "busy"},
            NO_ANSWER: {"answer": "no-answer", "ring_s": 0.5},
            FAILED: {"answer": "failed", "ring_s": 0.0},
        }
        scripted = httpx.post(twilio_fake.url + "/control/numbers", json=numbers, timeout=5)
        scripted.raise_for_status()
        yield gateway


def _assistant(name: str, voicemail: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "system_prompt": "You call {{customer}} about a visit. Be brief.",
        "greeting": "Hello {{customer}}, this is Acme calling about your visit.",
        "max_duration_s": 120,
        "voicemail": voicemail,
    }


async def _setup(http: httpx.AsyncClient, gateway: GatewayProcess) -> tuple[str, str]:
    """The caller id registered, and two assistants: (leave a message, hang up)."""
    h = {"x-api-key": gateway.api_key}
    claimed = await http.post("/numbers", json={"number": FROM}, headers=h)
    assert claimed.status_code in (201, 409), claimed.text
    no_message = {"action": "leave_message"}
    refused = await http.post("/assistants", json=_assistant("x", no_message), headers=h)
    assert refused.status_code == 422, refused.text
    leave = await http.post(
        "/assistants",
        json=_assistant("reminder", {"action": "leave_message", "message": MESSAGE}),
        headers=h,
    )
    hang_up = await http.post(
        "/assistants", json=_assistant("survey", {"action": "hangup"}), headers=h
    )
    assert leave.status_code == hang_up.status_code == 201, leave.text + hang_up.text
    # The message's placeholders are checked when a call is placed, like the greeting's.
    missing = await http.post(
        "/call/outbound",
        json={
            "assistant_id": leave.json()["id"],
            "to_number": MACHINE,
            "from_number": FROM,
            "metadata": {"customer": "Dana"},
        },
        headers=h,
    )
    assert missing.status_code == 422, missing.text
    assert missing.json()["error"]["details"][0]["loc"][-1] == "day"
    return leave.json()["id"], hang_up.json()["id"]


async def _place(
    http: httpx.AsyncClient, gateway: GatewayProcess, assistant_id: str, to: str
) -> tuple[str, str]:
    placed = await http.post(
        "/call/outbound",
        json={
            "assistant_id": assistant_id,
            "to_number": to,
            "from_number": FROM,
            "metadata": {"customer": "Dana", "day": "Friday"},
        },
        headers={"x-api-key": gateway.api_key},
    )
    assert placed.status_code == 201, placed.text
    return placed.json()["call_id"], placed.json()["call_sid"]


async def _finished(http: httpx.AsyncClient, gateway: GatewayProcess, call_id: str) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        call = (await http.get(f"/calls/{call_id}", headers={"x-api-key": gateway.api_key})).json()
        if call["ended_at"] is not None:
            return call
        await asyncio.sleep(0.1)
    raise AssertionError(f"call {call_id} did not end: {call}")


async def _callee(twilio_fake: FakeServer, call_sid: str) -> Any:
    """The callee's record once its call is over (completed sent)."""
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(timeout=5) as http:
        while time.monotonic() < deadline:
            record = (await http.get(f"{twilio_fake.url}/control/calls/{call_sid}")).json()
            if record["done"]:
                return record
            await asyncio.sleep(0.1)
    raise AssertionError(f"the callee of {call_sid} did not finish: {record}")


def _created_form(twilio_fake: FakeServer, to: str) -> Any:
    creates = [e for e in twilio_fake.log() if str(e.get("path", "")).endswith("/Calls.json")]
    return next(e["form"] for e in reversed(creates) if e["form"]["To"] == to)  # type: ignore[index]


async def test_voicemail_on_twilio(stack: GatewayProcess, twilio_fake: FakeServer) -> None:
    gateway = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        leave_id, hang_up_id = await _setup(http, gateway)
        placed = await asyncio.gather(
            _place(http, gateway, leave_id, MACHINE),
            _place(http, gateway, hang_up_id, MACHINE_TOO),
            _place(http, gateway, leave_id, HUMAN),
            _place(http, gateway, leave_id, BUSY),
            _place(http, gateway, leave_id, NO_ANSWER),
            _place(http, gateway, leave_id, FAILED),
        )
        (machine, _), (machine_too, _), (human, _) = placed[:3]
        calls = await asyncio.gather(*(_finished(http, gateway, c) for c, _ in placed))
        callees = await asyncio.gather(*(_callee(twilio_fake, s) for _, s in placed))

    # Async AMD asked for: message-end detection to leave a message, else the quick verdict.
    form = _created_form(twilio_fake, MACHINE)
    assert form["MachineDetection"] == "DetectMessageEnd" and form["AsyncAmd"] == "true"
    amd_url = urlsplit(form["AsyncAmdStatusCallback"])
    assert amd_url.path == "/twilio/amd" and parse_qs(amd_url.query)["call_id"] == [machine]
    assert _created_form(twilio_fake, MACHINE_TOO)["MachineDetection"] == "Enable"

    # A machine with a beep: the message, placeholders filled, after the beep; then hung up.
    call, callee = calls[0], callees[0]
    beep = next(s for s in callee["speech"] if s["what"] == "beep")
    assert callee["amd"]["answered_by"] == "machine_end_beep"
    assert callee["amd"]["callback_status"] == 204
    assert callee["agent_audio"], callee
    assert callee["agent_audio"][0][0] >= beep["end_ms"], (beep, callee["agent_audio"])
    assert callee["ended_by"] == "gateway"
    assert call["status"] == "completed" and call["end_reason"] == "voicemail", call
    assert call["answered_by"] == "machine_end_beep"
    said = [t["text"] for t in call["transcript"] if t["speaker"] == "agent"]
    assert said == ["Hi Dana, this is Acme about your visit on Friday. Please call us back."]
    assert not any(t["speaker"] == "caller" for t in call["transcript"])  # no turn of its

    # Hang up on a machine: at machine_start, nothing said.
    call, callee = calls[1], callees[1]
    assert callee["amd"]["answered_by"] == "machine_start"
    assert callee["agent_audio"] == [] and callee["ended_by"] == "gateway"
    assert call["status"] == "completed" and call["end_reason"] == "voicemail", call
    assert call["answered_by"] == "machine_start" and call["transcript"] == []

    # A person: greeted once the verdict came, never before; their "Hello?" is no turn.
    call, callee = calls[2], callees[2]
    assert callee["amd"]["answered_by"] == "human"
    words = callee["speech"][0]
    assert callee["agent_audio"], callee
    first_audio = callee["agent_audio"][0][0]
    assert first_audio >= callee["amd"]["at_ms"] >= words["end_ms"], callee
    assert call["answered_by"] == "human" and call["end_reason"] != "voicemail", call
    agent_first = call["transcript"][0]
    assert agent_first["speaker"] == "agent"
    assert agent_first["text"] == "Hello Dana, this is Acme calling about your visit."

    # Busy, no answer, failed: those statuses, no stream, no verdict.
    for call, callee, status in zip(
        calls[3:], callees[3:], ("busy", "no-answer", "failed"), strict=True
    ):
        assert call["status"] == status, call
        assert call["answered_at"] is None
        assert callee["amd"] is None and callee["agent_audio"] == []
        assert [s["status"] for s in callee["statuses"]][-1] == status
    assert machine_too and human


async def test_a_verdict_taken_by_another_gateway(
    stack: GatewayProcess,
    mongo_url: str,
    twilio_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Behind a balancer: the stream is served by gateway B while Twilio's callbacks (the
    AMD verdict among them) reach gateway A. A keeps the verdict beside the call; B's gate
    finds it there, leaves the message after the beep and ends the call."""
    a = stack
    env: dict[str, str | None] = {
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "MONGODB_DB": a.db_name,
        "PUBLIC_URL": a.base_url,
        "TWILIO_AUTH_TOKEN": a.auth_token,
        "GATEWAY_API_KEY": a.api_key,
        "VAD_SILENCE_MS": "400",
    }
    via_b = "+15550100007"
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gateway-b"), env) as b:
        # Time to spare on a loaded machine: the callee would hang up after 30 s.
        script = {via_b: {"answer": "machine", "stream_via": b.base_url, "talk_s": 90}}
        async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
            scripted = await http.post(twilio_fake.url + "/control/numbers", json=script)
            scripted.raise_for_status()
            leave_id, _ = await _setup(http, a)
            call_id, call_sid = await _place(http, a, leave_id, via_b)
            call = await _finished(http, a, call_id)
            callee = await _callee(twilio_fake, call_sid)
    assert callee["amd"]["answered_by"] == "machine_end_beep"
    beep = next(s for s in callee["speech"] if s["what"] == "beep")
    assert callee["agent_audio"] and callee["agent_audio"][0][0] >= beep["end_ms"], callee
    assert callee["ended_by"] == "gateway"
    assert call["status"] == "completed" and call["end_reason"] == "voicemail", call
    assert call["answered_by"] == "machine_end_beep"
    started = f'"msg": "media stream started", "call_id": "{call_id}"'
    assert started in b.log_text() and started not in a.log_text()
    assert f'"msg": "machine detection", "call_id": "{call_id}"' in a.log_text()


async def test_a_rest_hang_up_ends_a_scripted_call(
    stack: GatewayProcess, twilio_fake: FakeServer
) -> None:
    """Twilio's `Status=completed` update hangs the callee up: `stop` on its stream, the
    gateway ends the call, `completed` follows (the fake as the dialer's tests use it)."""
    gateway = stack
    talker = "+15550100008"
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        script = {talker: {"answer": "human", "talk_s": 120}}
        (await http.post(twilio_fake.url + "/control/numbers", json=script)).raise_for_status()
        leave_id, _ = await _setup(http, gateway)
        call_id, call_sid = await _place(http, gateway, leave_id, talker)
        deadline = time.monotonic() + 60
        while True:  # the greeting is heard
            record = (await http.get(f"{twilio_fake.url}/control/calls/{call_sid}")).json()
            if record["agent_audio"]:
                break
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.1)
        hung_up = await http.post(
            f"{twilio_fake.url}/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Calls/{call_sid}.json",
            data={"Status": "completed"},
            auth=(TWILIO_ACCOUNT, gateway.auth_token),
        )
        assert hung_up.status_code == 200, hung_up.text
        call = await _finished(http, gateway, call_id)
        callee = await _callee(twilio_fake, call_sid)
    assert callee["ended_by"] == "rest" and callee["ended_ms"] < 60_000
    assert [s["status"] for s in callee["statuses"]][-1] == "completed"
    assert call["status"] == "completed" and call["end_reason"] == "caller-hung-up", call
