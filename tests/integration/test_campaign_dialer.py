"""Campaigns end to end: real gateway processes on the real database dial a campaign's
contacts through the `twilio` SDK to the Twilio REST fake, whose scripted callees answer by
themselves (a person, an answering machine, busy, no answer, failed) over Media Streams.
The dialer's clock is a file the test rewrites (CAMPAIGN_CLOCK_FILE) to close and reopen
the campaign's window. Embedded providers (offline STT, espeak-ng, the local agent)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import FakeServer, GatewayProcess, run_gateway
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

pytestmark = pytest.mark.timeout(420)

TWILIO_ACCOUNT = "AC" + "0" * 32
FROM = "+15557770200"
OPEN_AT = "2030-01-07T12:00:00+00:00"  # a Monday noon: inside 09:00-17:00 UTC
CLOSED_AT = "2030-01-07T17:30:00+00:00"
REOPENS_AT = "2030-01-08T09:00:01+00:00"


def _numbers(prefix: str, count: int) -> list[str]:
    return [f"+1555{prefix}{i:04d}" for i in range(1, count + 1)]


def _env(twilio_fake: FakeServer, clock: Path, **more: str) -> dict[str, str | None]:
    return {
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "VAD_SILENCE_MS": "400",
        "CAMPAIGN_CLOCK_FILE": str(clock),
        "CAMPAIGN_TICK_S": "0.2",
        "CAMPAIGN_LIST_S": "0.5",
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        **more,
    }


def _set_clock(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new mtime: the gateway reads it again


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _metric(gateway: GatewayProcess, name: str) -> int:
    for line in httpx.get(gateway.base_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"voice_gateway_{name} "):
            return int(float(line.split()[1]))
    raise AssertionError(name)


def _script(twilio_fake: FakeServer, numbers: dict[str, dict[str, Any]]) -> None:
    httpx.post(twilio_fake.url + "/control/numbers", json=numbers, timeout=5).raise_for_status()


async def _setup(
    http: httpx.AsyncClient, h: dict[str, str], receiver: WebhookReceiver | None
) -> str:
    claimed = await http.post("/numbers", json={"number": FROM}, headers=h)
    assert claimed.status_code in (201, 409), claimed.text
    body: dict[str, Any] = {
        "name": "reminders",
        "system_prompt": "You remind {{name}} of a visit. Be brief.",
        "greeting": "Hello {{name}}, this is Acme.",
        "max_duration_s": 60,
        "voicemail": {"action": "hangup"},
    }
    if receiver is not None:
        body |= {
            "webhook_url": receiver.url,
            "webhook_events": ["campaign.contact_done", "campaign.completed"],
        }
    made = await http.post("/assistants", json=body, headers=h)
    assert made.status_code == 201, made.text
    assistant_id: str = made.json()["id"]
    return assistant_id


async def _campaign(
    http: httpx.AsyncClient, h: dict[str, str], assistant_id: str, numbers: list[str], **spec: Any
) -> str:
    body = {
        "name": "june reminders",
        "assistant_id": assistant_id,
        "call_service": "twilio",
        "from_number": FROM,
        "schedule": {"time_zone": "UTC", "hours": ["09:00", "17:00"]},
        "max_concurrency": 3,
        "calls_per_second": 2,
        "retry": {"on": ["busy", "no-answer"], "max_attempts": 2, "backoff_s": 1},
        **spec,
    }
    made = await http.post("/campaigns", json=body, headers=h)
    assert made.status_code == 201, made.text
    campaign_id: str = made.json()["id"]
    contacts = [
        {"to_number": n, "metadata": {"name": f"Person {i}"}} for i, n in enumerate(numbers)
    ]
    added = await http.post(f"/campaigns/{campaign_id}/contacts", json=contacts, headers=h)
    assert added.status_code in (200, 201), added.text
    return campaign_id


async def _state(http: httpx.AsyncClient, h: dict[str, str], campaign_id: str) -> Any:
    return (await http.get(f"/campaigns/{campaign_id}", headers=h)).json()


async def _contacts(http: httpx.AsyncClient, h: dict[str, str], campaign_id: str) -> Any:
    page = await http.get(f"/campaigns/{campaign_id}/contacts?limit=1000", headers=h)
    assert page.status_code == 200, page.text
    return {c["to_number"]: c for c in page.json()["items"]}


async def _calls(http: httpx.AsyncClient, h: dict[str, str]) -> list[Any]:
    items: list[Any] = []
    cursor = ""
    while True:
        page = (await http.get("/calls", params={"limit": 100, "cursor": cursor}, headers=h)).json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]


def _peak(calls: list[Any]) -> int:
    """The most calls live at once, from their stored start and end."""
    edges = []
    for c in calls:
        start = datetime.fromisoformat(c["started_at"])
        end = (
            datetime.fromisoformat(c["ended_at"])
            if c["ended_at"]
            else datetime.max.replace(tzinfo=start.tzinfo)
        )
        edges += [(start, 1), (end, -1)]
    live = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start
        live += step
        peak = max(peak, live)
    return peak


@pytest.fixture(scope="module")
def clock_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clock") / "campaign-clock"
    _set_clock(path, OPEN_AT)
    return path


@pytest.fixture(scope="module")
def stack(
    mongo_url: str,
    twilio_fake: FakeServer,
    clock_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    env = _env(twilio_fake, clock_file)
    with run_gateway(mongo_url, tmp_path_factory.mktemp("campaigns"), env) as gateway:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=gateway.auth_token)
        yield gateway


async def test_a_campaign_runs_to_completion_in_its_window_under_its_caps(
    stack: GatewayProcess, twilio_fake: FakeServer, clock_file: Path
) -> None:
    gateway, h = stack, {"x-api-key": stack.api_key}
    numbers = _numbers("031", 20)
    humans, machines = numbers[:13], numbers[13:15]
    busy, no_answer, failed, blocked = numbers[15:17], [numbers[17]], [numbers[18]], numbers[19]
    _script(
        twilio_fake,
        {n: {"answer": "human", "talk_s": 1.5} for n in humans}
        | {n: {"answer": "machine"} for n in machines}
        | {n: {"answer": "busy"} for n in busy}
        | {n: {"answer": "no-answer", "ring_s": 0.5} for n in no_answer}
        | {n: {"answer": "failed", "ring_s": 0.0} for n in failed}
        | {blocked: {"answer": "human"}},
    )
    with run_webhook_receiver("/hooks/campaign") as receiver:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
            assistant_id = await _setup(http, h, receiver)
            # The organisation's cap: 4 live calls, 1 kept for inbound: 3 outbound at most,
            # below the campaign's own 4.
            capped = await http.patch(
                "/organization",
                json={"max_concurrent_calls": 4, "inbound_reserved_calls": 1},
                headers=h,
            )
            assert capped.status_code == 200, capped.text
            dnc = await http.post("/do-not-call", json={"numbers": [blocked]}, headers=h)
            assert dnc.status_code in (200, 201), dnc.text
            campaign_id = await _campaign(http, h, assistant_id, numbers, max_concurrency=4)

            # Some calls are placed; then the window closes (the clock file jumps).
            async def dialled(k: int) -> bool:
                return len(await _calls(http, h)) >= k

            await _until("six calls", lambda: dialled(6))
            closed_at = datetime.now().astimezone()
            _set_clock(clock_file, CLOSED_AT)

            async def settled() -> bool:
                calls = await _calls(http, h)
                return all(c["ended_at"] is not None for c in calls)

            await _until("the live calls to end", settled)
            held = len(await _calls(http, h))
            rounds = await asyncio.to_thread(_metric, gateway, "campaign_rounds_total")

            async def ticked() -> bool:
                now = await asyncio.to_thread(_metric, gateway, "campaign_rounds_total")
                return now >= rounds + 15

            await _until("the dialer to go on ticking", ticked)
            assert len(await _calls(http, h)) == held  # held while closed
            pending = (await _state(http, h, campaign_id))["counts"]["by_status"]["pending"]
            assert pending > 0
            reopened_at = datetime.now().astimezone()
            _set_clock(clock_file, REOPENS_AT)

            async def completed() -> bool:
                return bool((await _state(http, h, campaign_id))["state"] == "completed")

            await _until("the campaign to complete", completed, within_s=240)
            contacts = await _contacts(http, h, campaign_id)
            calls = await _calls(http, h)

    # The right outcome for each, and only what the policy retries was retried.
    expected = (
        {n: ("completed", 1) for n in humans}
        | {n: ("voicemail", 1) for n in machines}
        | {n: ("busy", 2) for n in busy}
        | {n: ("no-answer", 2) for n in no_answer}
        | {n: ("failed", 1) for n in failed}
        | {blocked: ("do-not-call", 0)}
    )
    got = {n: (c["outcome"], c["attempts"]) for n, c in contacts.items()}
    assert got == expected
    assert all(c["status"] == "done" for c in contacts.values())
    assert all(len(c["call_ids"]) == c["attempts"] for c in contacts.values())
    by_number: dict[str, int] = {}
    for c in calls:
        by_number[c["to_number"]] = by_number.get(c["to_number"], 0) + 1
    assert by_number == {n: a for n, (_, a) in expected.items() if a}
    assert all(c["metadata"]["name"].startswith("Person ") for c in calls)
    # Never above the organisation's outbound share (3), below the campaign's 4.
    assert _peak(calls) <= 3
    # Nothing was placed while the window was closed (a start scheduled in the round that
    # saw it open may store its call within a round after).
    for c in calls:
        started = datetime.fromisoformat(c["started_at"])
        assert not (closed_at.timestamp() + 1.0 < started.timestamp() < reopened_at.timestamp())
    # One campaign.contact_done per contact, then campaign.completed, through the outbox.
    events = [r.json() for r in receiver.wait_accepted(21, within_s=60)]
    done = {e["contact"]["to_number"]: e for e in events if e["type"] == "campaign.contact_done"}
    assert {n: (e["contact"]["outcome"], e["contact"]["attempts"]) for n, e in done.items()} == (
        expected
    )
    [final] = [e for e in events if e["type"] == "campaign.completed"]
    assert final["state"] == "completed" and final["counts"]["total"] == 20
    assert final["counts"]["by_outcome"]["completed"] == 13


async def test_post_call_outbound_answers_429_at_the_organisation_cap(
    stack: GatewayProcess, twilio_fake: FakeServer
) -> None:
    h = {"x-api-key": stack.api_key}
    [long_call, second] = _numbers("032", 2)
    _script(twilio_fake, {long_call: {"answer": "human", "talk_s": 60}})
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        assistant_id = await _setup(http, h, None)
        capped = await http.patch(
            "/organization",
            json={"max_concurrent_calls": 2, "inbound_reserved_calls": 1},
            headers=h,
        )
        assert capped.status_code == 200, capped.text
        body = {"assistant_id": assistant_id, "from_number": FROM, "metadata": {"name": "Al"}}
        first = await http.post("/call/outbound", json=body | {"to_number": long_call}, headers=h)
        assert first.status_code == 201, first.text
        refused = await http.post("/call/outbound", json=body | {"to_number": second}, headers=h)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "organization_at_capacity"
        assert int(refused.headers["Retry-After"]) >= 1
        # The first call ends (hung up through Twilio's REST API by the test): room again.
        sid = first.json()["call_sid"]
        hung_up = await http.post(
            f"{twilio_fake.url}/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Calls/{sid}.json",
            data={"Status": "completed"},
            auth=(TWILIO_ACCOUNT, stack.auth_token),
        )
        hung_up.raise_for_status()

        async def ended() -> bool:
            call = (await http.get(f"/calls/{first.json()['call_id']}", headers=h)).json()
            return call["ended_at"] is not None

        await _until("the first call to end", ended)
        _script(twilio_fake, {second: {"answer": "busy"}})
        again = await http.post("/call/outbound", json=body | {"to_number": second}, headers=h)
        assert again.status_code == 201, again.text
        await http.patch("/organization", json={"max_concurrent_calls": None}, headers=h)


async def test_cancel_stops_new_attempts_and_live_calls_finish(
    stack: GatewayProcess, twilio_fake: FakeServer, clock_file: Path
) -> None:
    h = {"x-api-key": stack.api_key}
    numbers = _numbers("033", 10)
    _script(twilio_fake, {n: {"answer": "human", "talk_s": 4} for n in numbers})
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=20) as http:
        assistant_id = await _setup(http, h, None)
        campaign_id = await _campaign(
            http, h, assistant_id, numbers, max_concurrency=2, calls_per_second=1
        )

        async def calling() -> bool:
            counts = (await _state(http, h, campaign_id))["counts"]["by_status"]
            return bool(counts["calling"] >= 1)

        await _until("a live attempt", calling)
        cancelled = await http.post(f"/campaigns/{campaign_id}/cancel", headers=h)
        assert cancelled.status_code == 200, cancelled.text

        async def settled() -> bool:
            counts = (await _state(http, h, campaign_id))["counts"]["by_status"]
            return bool(counts["calling"] == 0 and counts["pending"] == 0)

        await _until("the cancelled campaign to settle", settled)
        contacts = await _contacts(http, h, campaign_id)
    done = [c for c in contacts.values() if c["status"] == "done"]
    cancelled_ones = [c for c in contacts.values() if c["status"] == "cancelled"]
    assert 1 <= len(done) <= 3 and len(done) + len(cancelled_ones) == 10
    assert all(c["outcome"] == "completed" for c in done)  # live calls finished normally
    assert all(c["attempts"] == 0 for c in cancelled_ones)


async def test_two_gateways_dial_each_attempt_once_and_a_killed_leader_is_taken_over(
    mongo_url: str,
    twilio_fake: FakeServer,
    clock_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two gateways on one database (one Twilio token, as behind one balancer): one leads,
    and is SIGKILLed with attempts in flight. Its calls' status callbacks go nowhere now:
    the survivor judges them after the ring bound, takes the campaign over once the dead
    leader's heartbeat is stale, and finishes it. No attempt is dialled twice."""
    _set_clock(clock_file, OPEN_AT)
    token = "shared-twilio-token"
    env = _env(
        twilio_fake,
        clock_file,
        CALL_LEASE_S="3",
        MONGODB_DB="campaign_two",
        TWILIO_AUTH_TOKEN=token,
        OUTBOUND_RING_TIMEOUT_S="5",
        CAMPAIGN_ATTEMPT_STALE_S="3",
    )
    numbers = _numbers("034", 16)
    work = tmp_path_factory.mktemp("two")
    (work / "a").mkdir()
    (work / "b").mkdir()
    with (
        run_gateway(mongo_url, work / "a", env) as a,
        run_gateway(mongo_url, work / "b", env) as b,
    ):
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=token)
        _script(
            twilio_fake,
            {n: {"answer": "busy", "ring_s": 1.0} for n in numbers[:8]}
            | {n: {"answer": "no-answer", "ring_s": 1.0} for n in numbers[8:]},
        )
        h = {"x-api-key": a.api_key}
        async with httpx.AsyncClient(base_url=a.base_url, timeout=20) as http:
            assistant_id = await _setup(http, h, None)
            campaign_id = await _campaign(
                http,
                h,
                assistant_id,
                numbers,
                max_concurrency=3,
                calls_per_second=3,
                retry={"on": ["busy", "no-answer", "failed"], "max_attempts": 2, "backoff_s": 1},
            )

            async def placed() -> bool:
                counts = [
                    await asyncio.to_thread(_metric, g, "campaign_attempts_total") for g in (a, b)
                ]
                return sum(counts) >= 5

            await _until("attempts placed", placed)
            from_a = await asyncio.to_thread(_metric, a, "campaign_attempts_total")
            leader, survivor = (a, b) if from_a > 0 else (b, a)
            before = await asyncio.to_thread(_metric, survivor, "campaign_attempts_total")
            assert before == 0  # one leader dials
            os.kill(leader.pid, signal.SIGKILL)
        # a's key, which set the campaign up: b's own GATEWAY_API_KEY is ignored when a
        # bootstrapped the database first (a loaded machine staggers their starts).
        hs = h
        async with httpx.AsyncClient(base_url=survivor.base_url, timeout=20) as http:

            async def completed() -> bool:
                state = (await http.get(f"/campaigns/{campaign_id}", headers=hs)).json()
                return bool(state["state"] == "completed")

            await _until("the survivor to finish the campaign", completed, within_s=240)
            taken = await asyncio.to_thread(_metric, survivor, "campaign_attempts_total")
            contacts = await _contacts(http, hs, campaign_id)
            calls = await _calls(http, hs)
    assert taken > 0  # the survivor took over
    assert all(c["status"] == "done" and c["attempts"] == 2 for c in contacts.values())
    # Each attempt dialled at most once: a contact's calls are those its attempts name.
    creates: dict[str, int] = {}
    for entry in twilio_fake.log():
        form = entry.get("form")
        if entry.get("method") == "POST" and isinstance(form, dict) and "Twiml" in form:
            creates[str(form["To"])] = creates.get(str(form["To"]), 0) + 1
    for number, contact in contacts.items():
        stored = {c["id"] for c in calls if c["to_number"] == number}
        assert stored == set(contact["call_ids"]), number
        assert creates.get(number, 0) <= 2 and len(stored) <= 2
