"""`voice-gateway serve --workers 2` as a real process on its embedded FerretDB: both workers
answer on the one port, a Twilio call runs end to end on it, a worker killed with SIGKILL is
started again while the other keeps serving and its call ends once, as lost, with one
report; SIGTERM stops every process with status 0, and a SIGKILLed supervisor takes its
workers with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(300)

NUMBER = "+15550007788"
LEASE_S = 3.0


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _log(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The JSON lines of the supervisor and of its workers (one file: they share stderr)."""
    lines = []
    for line in gateway.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def _ready_pids(gateway: GatewayProcess) -> dict[int, list[int]]:
    """Each worker's processes, in the order they became ready (the supervisor says)."""
    pids: dict[int, list[int]] = {}
    for line in _log(gateway):
        if line["logger"] == "gateway.workers" and line["msg"] == "worker ready":
            pids.setdefault(line["worker"], []).append(line["pid"])
    return pids


async def _all_ready(gateway: GatewayProcess, count: int) -> dict[int, int]:
    async def ready() -> bool:
        return len(_ready_pids(gateway)) == count

    await _until(f"{count} workers ready", ready)
    return {worker: pids[-1] for worker, pids in _ready_pids(gateway).items()}


async def _workers_answering(gateway: GatewayProcess, want: set[int]) -> dict[int, int]:
    """/health over new connections until each worker in `want` answered; how many times
    each did."""
    seen: dict[int, int] = {}
    # No keep-alive: each request is a new connection, accepted by whichever worker.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10, limits=limits) as http:
        for _ in range(2000):
            health = (await http.get("/health")).json()
            assert health["status"] == "ok" and health["database"] == "ok", health
            seen[health["worker"]] = seen.get(health["worker"], 0) + 1
            if want <= set(seen):
                return seen
    raise AssertionError(f"over 2000 connections only workers {seen} answered")


def _gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie not yet reaped by init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _embedded(tmp_path: Path, **env: str) -> dict[str, str | None]:
    """The gateway's own FerretDB (MONGODB_URL unset) with its data under `tmp_path`."""
    return {"MONGODB_URL": None, "DATA_DIR": str(tmp_path / "data"), **env}


def _ferretdb_socket(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ferretdb" / "ferretdb.sock"


async def test_two_workers_share_one_port_serve_a_call_and_stop_on_sigterm(
    tmp_path: Path,
) -> None:
    with run_gateway("", tmp_path, _embedded(tmp_path), workers=2) as gateway:
        pids = await _all_ready(gateway, 2)
        assert len(set(pids.values())) == 2 and gateway.pid not in pids.values()
        seen = await _workers_answering(gateway, {0, 1})
        assert set(seen) == {0, 1}
        # Each worker froze its startup heap once serving (gateway/server.py).
        frozen = [
            json.loads(line) for line in gateway.log_text().splitlines()
            if "startup heap frozen" in line
        ]  # fmt: skip
        assert sorted(entry["worker"] for entry in frozen) == [0, 1]
        assert all(entry["objects"] > 10_000 for entry in frozen)

        call = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
        )
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
            await call.start(http)
            try:
                await call.wait_agent_audio(within_s=30)
                await call.wait_agent_silent()
                call.say(espeak_mulaw("What are your opening hours?"))
                await call.wait_said()
                await call.wait_agent_audio(within_s=30)
                await call.wait_agent_silent()
                await call.stop()
            finally:
                await call.aclose()
            assert call.call_id is not None
            stored: dict[str, Any] = {}

            async def ended() -> bool:
                got = await http.get(
                    f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key}
                )
                stored.update(got.json())
                return bool(stored.get("ended_at"))

            await _until("the call to be finished", ended)
        assert (stored["status"], stored["end_reason"]) == ("completed", "caller-hung-up")
        speakers = [t["speaker"] for t in stored["transcript"]]
        assert speakers[0] == "agent" and "caller" in speakers
        [stream] = [
            line
            for line in _log(gateway)
            if line["msg"] == "media stream started" and line.get("call_id") == call.call_id
        ]
        assert stream["worker"] in (0, 1)  # every line of a worker says which it is

        # SIGTERM: forwarded to both workers, each drains and exits 0, then FerretDB stops.
        assert gateway.process is not None
        os.kill(gateway.pid, signal.SIGTERM)
        status = await asyncio.to_thread(gateway.process.wait, 60)
        assert status == 0, gateway.log_text()[-3000:]
        exits = {
            line["worker"]: line["status"]
            for line in _log(gateway)
            if line["logger"] == "gateway.workers" and line["msg"].startswith("worker exited")
        }
        assert exits == {0: 0, 1: 0}
        assert all(_gone(pid) for pid in pids.values())
        assert not _ferretdb_socket(tmp_path).exists()  # FerretDB stopped cleanly


async def _assistant_with_webhook(http: httpx.AsyncClient, key: str, hook: str) -> None:
    h = {"x-api-key": key}
    claimed = await http.post("/numbers", headers=h, json={"number": NUMBER})
    assert claimed.status_code == 201, claimed.text
    created = await http.post(
        "/assistants",
        headers=h,
        json={
            "name": "Workers",
            "system_prompt": "Help the caller.",
            "greeting": "Hello, you reached the workers line. How can I help?",
            "webhook_url": hook,
            "webhook_events": ["call.ended"],
            "phone_numbers": [NUMBER],
        },
    )
    assert created.status_code == 201, created.text


def _reports(receiver: WebhookReceiver, call_id: str) -> list[dict[str, Any]]:
    return [r.json()["call"] for r in receiver.accepted() if r.json()["call"]["id"] == call_id]


async def test_a_killed_worker_is_restarted_and_its_call_ends_once_as_lost(
    tmp_path: Path,
) -> None:
    env = _embedded(
        tmp_path,
        CALL_LEASE_S=str(LEASE_S),
        WEBHOOK_ALLOW_HOSTS='["127.0.0.1"]',
        WEBHOOK_RETRY_BASE_S="0.2",
        WEBHOOK_RETRY_CAP_S="1",
    )
    with (
        run_webhook_receiver() as receiver,
        run_gateway("", tmp_path, env, workers=2) as gateway,
    ):
        pids = await _all_ready(gateway, 2)
        key = gateway.api_key
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
            await _assistant_with_webhook(http, key, receiver.url)
            call = SimulatedTwilioCall(
                base_url=gateway.base_url,
                public_url=gateway.base_url,
                auth_token=gateway.auth_token,
                to_number=NUMBER,
            )
            await call.start(http)
            try:
                await call.wait_agent_audio(within_s=30)
                await call.wait_agent_silent()
                call_id = call.call_id
                assert call_id is not None
                [stream] = [
                    line
                    for line in _log(gateway)
                    if line["msg"] == "media stream started" and line.get("call_id") == call_id
                ]
                victim = stream["worker"]
                os.kill(pids[victim], signal.SIGKILL)
                await call.wait_closed(within_s=30)  # the caller's stream went with it
            finally:
                await call.aclose()

            # The other worker serves meanwhile, and the dead one is started again.
            await _workers_answering(gateway, {1 - victim})

            async def restarted() -> bool:
                return len(_ready_pids(gateway).get(victim, [])) == 2

            await _until(f"worker {victim} to be started again", restarted)
            new_pid = _ready_pids(gateway)[victim][-1]
            assert new_pid != pids[victim] and _gone(pids[victim])
            died = [
                line
                for line in _log(gateway)
                if line["logger"] == "gateway.workers" and line["msg"].startswith("worker died")
            ]
            assert [(d["worker"], d["pid"]) for d in died] == [(victim, pids[victim])]
            assert "killed by SIGKILL" in died[0]["msg"]
            await _workers_answering(gateway, {0, 1})

            # Its call: finished once, as lost, by a sweeper (the restarted worker is a new
            # gateway: it takes no call of the dead one over), and reported once.
            stored: dict[str, Any] = {}

            async def ended() -> bool:
                got = await http.get(f"/calls/{call_id}", headers={"x-api-key": key})
                stored.update(got.json())
                return bool(stored.get("ended_at"))

            await _until("the lost call to be finished", ended)
            assert (stored["status"], stored["end_reason"]) == ("failed", "gateway-lost")

            async def reported() -> bool:
                page = await http.get(
                    "/webhooks/deliveries?status=delivered", headers={"x-api-key": key}
                )
                return call_id in {d["call_id"] for d in page.json()["items"]}

            await _until("the lost call's report", reported)
        [report] = _reports(receiver, call_id)
        assert report["end_reason"] == "gateway-lost"
        finished = [
            line
            for line in _log(gateway)
            if line["msg"] == "finished a call whose gateway stopped"
            and line.get("call_id") == call_id
        ]
        assert len(finished) == 1, finished

        # SIGKILL of the supervisor: no worker outlives it (PR_SET_PDEATHSIG).
        live = [pids[1 - victim], new_pid]
        os.kill(gateway.pid, signal.SIGKILL)

        async def orphans_gone() -> bool:
            return all(_gone(pid) for pid in live)

        await _until("the workers to die with their supervisor", orphans_gone, within_s=30)

        async def ferretdb_stopped() -> bool:  # it gets SIGTERM as its parent dies
            return not _ferretdb_socket(tmp_path).exists()

        await _until("the embedded FerretDB to stop", ferretdb_stopped, within_s=30)
