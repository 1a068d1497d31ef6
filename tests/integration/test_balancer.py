"""Two gateway processes on one database behind HAProxy (Debian's, configured from
`deploy/haproxy.cfg`), on loopback. Simulated Twilio calls reach the gateways only through
the balancer: their webhooks and their Media Streams WebSockets both.

- Calls spread over both gateways. SIGTERM to one: its /ready answers 503 `draining`, the
  balancer takes it out, new calls all go to the other; its live calls talk on and end as
  their callers hang up (none lost), then it exits 0. The other serves on.
- SIGKILL of one: each of its calls is finished once as lost (one report each) by the
  other, whose own calls are not touched and end normally.
- A call still live when the drain's bound comes hears a goodbye and ends
  `gateway-shutdown`; the process still exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall
from storage import CallRecord, Database, open_database
from tests.balancer import Balancer, run_balancer
from tests.net import free_port
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(300)

NUMBER = "+15550008888"
LEASE_S = 3.0


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _gateway_id(gateway: GatewayProcess) -> str:
    """The gateway id the process logged when it became ready."""
    for line in gateway.log_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("msg") == "gateway ready":
                return str(record["gateway_id"])
    raise AssertionError("no 'gateway ready' line:\n" + gateway.log_text()[-2000:])


class _Pair:
    """Gateways `a` and `b` on one database behind `balancer`; calls are placed through it."""

    def __init__(
        self, a: GatewayProcess, b: GatewayProcess, balancer: Balancer, db: Database, key: str
    ) -> None:
        self.a, self.b, self.balancer, self.db, self.key = a, b, balancer, db, key
        self.ids = {_gateway_id(a): "a", _gateway_id(b): "b"}
        self.calls: list[SimulatedTwilioCall] = []

    async def place(self, http: httpx.AsyncClient) -> SimulatedTwilioCall:
        """A call through the balancer, once its caller heard the whole greeting."""
        phone = SimulatedTwilioCall(
            base_url=self.balancer.url,
            public_url=self.balancer.url,
            auth_token=self.a.auth_token,
            to_number=NUMBER,
        )
        self.calls.append(phone)
        await phone.start(http)
        await phone.wait_agent_audio(within_s=30)
        await phone.wait_agent_silent()
        return phone

    async def served_by(self, phone: SimulatedTwilioCall) -> str:
        """'a' or 'b': the gateway that took the call's stream (stored beside the call)."""
        assert phone.call_id is not None
        found: list[str] = []

        async def stored() -> bool:
            call = await self.db.calls.get_call(phone.call_id or "", with_turns=False)
            if call.served_by is not None:
                found.append(self.ids[call.served_by])
            return bool(found)

        await _until(f"call {phone.call_id} to name its gateway", stored)
        return found[0]

    async def ended(self, phone: SimulatedTwilioCall) -> CallRecord:
        assert phone.call_id is not None
        call_id = phone.call_id
        stored: list[CallRecord] = []

        async def ended() -> bool:
            stored[:] = [await self.db.calls.get_call(call_id, with_turns=False)]
            return stored[0].ended_at is not None

        await _until(f"call {call_id} to end", ended)
        return stored[0]

    async def aclose(self) -> None:
        for phone in self.calls:
            await phone.aclose()


@contextlib.asynccontextmanager
async def _pair(
    mongo_url: str, tmp_path: Path, receiver: WebhookReceiver, env: dict[str, str | None]
) -> AsyncIterator[_Pair]:
    """Gateways A and B (PUBLIC_URL: the balancer), HAProxy in front, an assistant on
    NUMBER whose reports go to `receiver`; both servers UP before the block starts."""
    db_name = "balancer_" + uuid.uuid4().hex[:8]
    port = free_port()
    for name in ("a", "b", "lb"):
        (tmp_path / name).mkdir()
    env = {
        "MONGODB_DB": db_name,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CALL_LEASE_S": str(LEASE_S),
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        "WEBHOOK_RETRY_BASE_S": "0.2",
        "WEBHOOK_RETRY_CAP_S": "1",
        **env,
    }
    with run_gateway(mongo_url, tmp_path / "a", env) as a:
        shared = {**env, "TWILIO_AUTH_TOKEN": a.auth_token, "GATEWAY_API_KEY": a.api_key}
        with run_gateway(mongo_url, tmp_path / "b", shared) as b:
            servers = {"a": _port(a), "b": _port(b)}
            with run_balancer(tmp_path / "lb", servers, port=port) as balancer:

                async def both_up() -> bool:
                    states = await asyncio.to_thread(balancer.server_states)
                    return set(states.values()) == {"UP"}

                await _until("both gateways UP at the balancer", both_up)
                database = await open_database(mongo_url, db_name)
                pair = _Pair(a, b, balancer, database, a.api_key)
                try:
                    async with httpx.AsyncClient(base_url=balancer.url, timeout=20) as http:
                        await _assistant(http, a.api_key, receiver.url)
                    yield pair
                finally:
                    await pair.aclose()
                    await database.close()


def _port(gateway: GatewayProcess) -> int:
    return int(gateway.base_url.rsplit(":", 1)[1])


async def _assistant(http: httpx.AsyncClient, key: str, hook: str | None) -> None:
    headers = {"x-api-key": key}
    claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
    assert claimed.status_code == 201, claimed.text
    body: dict[str, object] = {
        "name": "Balanced line",
        "system_prompt": "Help the caller.",
        "greeting": "Hello, you reached the balanced line. How can I help?",
        "phone_numbers": [NUMBER],
    }
    if hook is not None:
        body |= {"webhook_url": hook, "webhook_events": ["call.ended"]}  # reports counted
    created = await http.post("/assistants", json=body, headers=headers)
    assert created.status_code == 201, created.text


def _reports(receiver: WebhookReceiver) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in receiver.accepted():
        call_id = request.json()["call"]["id"]
        counts[call_id] = counts.get(call_id, 0) + 1
    return counts


async def _one_report_each(receiver: WebhookReceiver, call_ids: set[str]) -> None:
    async def all_in() -> bool:
        return set(_reports(receiver)) >= call_ids

    await _until("a report for every call", all_in)
    counts = _reports(receiver)
    assert {i: counts[i] for i in call_ids} == dict.fromkeys(call_ids, 1), counts


async def test_sigterm_drains_one_gateway_while_the_other_takes_the_new_calls(
    mongo_url: str, tmp_path: Path
) -> None:
    with run_webhook_receiver() as receiver:
        async with (
            _pair(mongo_url, tmp_path, receiver, {"DRAIN_TIMEOUT_S": "120"}) as pair,
            httpx.AsyncClient(base_url=pair.balancer.url, timeout=20) as http,
        ):
            # Calls spread over both gateways (leastconn: each live stream is a connection).
            first = [await pair.place(http) for _ in range(4)]
            where = [await pair.served_by(phone) for phone in first]
            assert sorted(where) == ["a", "a", "b", "b"], where
            on_b = [p for p, w in zip(first, where, strict=True) if w == "b"]
            on_a = [p for p, w in zip(first, where, strict=True) if w == "a"]

            os.kill(pair.b.pid, signal.SIGTERM)
            async with httpx.AsyncClient(base_url=pair.b.base_url, timeout=20) as direct:

                async def draining() -> bool:
                    return (await direct.get("/ready")).status_code == 503

                await _until("B's /ready to answer 503", draining)
                ready = (await direct.get("/ready")).json()
                assert ready == {"status": "draining", "live_calls": 2}, ready
                health = await direct.get("/health")
                assert health.status_code == 200 and health.json()["status"] == "draining"
                # A new call's webhook reaching B itself is refused, for another gateway.
                stray = SimulatedTwilioCall(
                    base_url=pair.b.base_url,
                    public_url=pair.balancer.url,
                    auth_token=pair.a.auth_token,
                    to_number=NUMBER,
                )
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await stray.answer(direct)
                assert refused.value.response.status_code == 503
                assert refused.value.response.headers["retry-after"] == "1"
                assert refused.value.response.json()["error"]["code"] == "draining"

            async def b_out() -> bool:
                states = await asyncio.to_thread(pair.balancer.server_states)
                return states["b"].startswith("DOWN") and states["a"].startswith("UP")

            await _until("the balancer to take B out", b_out)
            later = [await pair.place(http) for _ in range(2)]
            assert [await pair.served_by(phone) for phone in later] == ["a", "a"]

            # B's calls talked on through all this; their callers hang up: a normal end.
            assert pair.b.process is not None and pair.b.process.poll() is None
            for phone in on_b:
                assert phone.call_id is not None
                call = await pair.db.calls.get_call(phone.call_id, with_turns=False)
                assert call.ended_at is None
                await phone.stop()
            assert await asyncio.to_thread(pair.b.wait_exit, 60) == 0
            assert "drained: every call ended" in pair.b.log_text()

            for phone in [*on_a, *later]:  # A served on, and its calls end normally too
                await phone.stop()
            ended = {p.call_id: await pair.ended(p) for p in [*first, *later]}
            for call in ended.values():
                assert (call.status, call.end_reason) == ("completed", "caller-hung-up"), call
            await _one_report_each(receiver, {str(i) for i in ended})


async def test_sigkill_of_one_gateway_loses_its_calls_once_and_leaves_the_others_alone(
    mongo_url: str, tmp_path: Path
) -> None:
    with run_webhook_receiver() as receiver:
        async with (
            _pair(mongo_url, tmp_path, receiver, {}) as pair,
            httpx.AsyncClient(base_url=pair.balancer.url, timeout=20) as http,
        ):
            phones = [await pair.place(http) for _ in range(4)]
            where = [await pair.served_by(phone) for phone in phones]
            assert sorted(where) == ["a", "a", "b", "b"], where
            on_b = [p for p, w in zip(phones, where, strict=True) if w == "b"]
            on_a = [p for p, w in zip(phones, where, strict=True) if w == "a"]

            os.kill(pair.b.pid, signal.SIGKILL)
            lost = [await pair.ended(phone) for phone in on_b]  # A's sweeper, after a lease
            for call in lost:
                assert (call.status, call.end_reason) == ("failed", "gateway-lost"), call
            for phone in on_a:  # untouched: still live, still served by A
                assert phone.call_id is not None
                call = await pair.db.calls.get_call(phone.call_id, with_turns=False)
                assert call.ended_at is None and pair.ids.get(call.served_by or "") == "a"
            finished = [
                line
                for line in pair.a.log_text().splitlines()
                if "finished a call whose gateway stopped" in line
            ]
            assert len(finished) == 2, finished

            # A's callers still have their agent: the balancer sends B's new calls to A.
            later = await pair.place(http)
            assert await pair.served_by(later) == "a"
            for phone in [*on_a, later]:
                await phone.stop()
            for phone in [*on_a, later]:
                call = await pair.ended(phone)
                assert (call.status, call.end_reason) == ("completed", "caller-hung-up"), call
            ids = {str(p.call_id) for p in [*phones, later]}
            await _one_report_each(receiver, ids)


async def test_a_call_live_at_the_drain_bound_hears_a_goodbye_and_ends_as_shutdown(
    mongo_url: str, tmp_path: Path
) -> None:
    db_name = "drain_" + uuid.uuid4().hex[:8]
    env: dict[str, str | None] = {"MONGODB_DB": db_name, "DRAIN_TIMEOUT_S": "1"}
    with run_gateway(mongo_url, tmp_path, env) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
            await _assistant(http, gateway.api_key, None)
            phone = SimulatedTwilioCall(
                base_url=gateway.base_url,
                public_url=gateway.base_url,
                auth_token=gateway.auth_token,
                to_number=NUMBER,
            )
            try:
                await phone.start(http)
                await phone.wait_agent_audio(within_s=30)
                await phone.wait_agent_silent()
                os.kill(gateway.pid, signal.SIGTERM)
                await phone.wait_agent_audio(within_s=30)  # the goodbye
                await phone.wait_closed(within_s=60)  # then the gateway hangs up
            finally:
                await phone.aclose()
            assert await asyncio.to_thread(gateway.wait_exit, 60) == 0
        assert "drain timeout: ending the calls left" in gateway.log_text()
        database = await open_database(mongo_url, db_name)
        try:
            assert phone.call_id is not None
            call = await database.calls.get_call(phone.call_id, with_turns=False)
        finally:
            await database.close()
        assert (call.status, call.end_reason) == ("failed", "gateway-shutdown")
