"""`GET /metrics` of `voice-gateway serve --workers 2` (a real process on its embedded
FerretDB) is the whole gateway's whichever worker answers: calls refused on each worker are
summed in every scrape, two live workers are counted, and after a worker is SIGKILLed and
started again no counter goes backwards (the new worker carries the dead one's counters);
the run's metrics directory is removed when the gateway stops."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from .conftest import GatewayProcess, run_gateway
from .test_admission import _voice_webhook as voice_webhook
from .test_workers import _all_ready, _embedded, _ready_pids, _until

pytestmark = pytest.mark.timeout(300)

REFUSED = 'voice_gateway_calls_refused_total{arrival="twilio",cause="live-calls"}'


def _value(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


async def _worker_of(http: httpx.AsyncClient) -> int:
    health = (await http.get("/health")).json()
    assert health["status"] == "ok", health
    return int(health["worker"])


async def _client_on(
    gateway: GatewayProcess, worker: int, stack: contextlib.AsyncExitStack
) -> httpx.AsyncClient:
    """A client whose one kept-alive connection was accepted by `worker` (each request on it
    goes there while HTTP_KEEP_ALIVE_S lasts; `_scrape` checks it still does)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    for _ in range(2000):
        http = httpx.AsyncClient(base_url=gateway.base_url, timeout=15, limits=limits)
        stack.push_async_callback(http.aclose)  # (a second aclose does nothing)
        if await _worker_of(http) == worker:
            return http
        await http.aclose()
    raise AssertionError(f"over 2000 connections worker {worker} accepted none")


async def _scrape(http: httpx.AsyncClient, worker: int) -> str:
    """/metrics as `worker` answered it."""
    text = (await http.get("/metrics")).text
    assert await _worker_of(http) == worker  # the same connection, so the same worker
    return text


async def _voice_webhook(http: httpx.AsyncClient, gateway: GatewayProcess, worker: int) -> bool:
    """Twilio's signed voice webhook of a new call, on `worker`; whether it was refused."""
    twiml = await voice_webhook(http, gateway, "CA" + secrets.token_hex(16))
    assert await _worker_of(http) == worker
    return ET.fromstring(twiml).find("./Reject") is not None


async def _refuse(http: httpx.AsyncClient, gateway: GatewayProcess, worker: int, n: int) -> int:
    """`n` new calls on `worker`, bounded to one live call whose place is held: the first
    one admitted (held, its stream never comes), the others refused. How many were."""
    return sum([await _voice_webhook(http, gateway, worker) for _ in range(n)])


async def _until_total(clients: dict[int, httpx.AsyncClient], name: str, want: float) -> None:
    """Scrape each worker until one shows `want` (the others' last publication comes within
    a second); never more than `want` meanwhile."""

    async def reached() -> bool:
        seen = []
        for worker, http in clients.items():
            value = _value(await _scrape(http, worker), name)
            assert value <= want, (worker, value)
            seen.append(value)
        return want in seen

    await _until(f"{name} to reach {want}", reached, within_s=30)


async def test_metrics_are_the_whole_gateways_and_survive_a_killed_worker(
    tmp_path: Path,
) -> None:
    run_tmp = tmp_path / "tmp"  # where `serve` makes the run's metrics directory
    run_tmp.mkdir()
    env = _embedded(
        tmp_path,
        MAX_LIVE_CALLS="1",
        ADMISSION_HOLD_S="300",  # an admitted call holds its place for the whole test
        MAX_LOOP_LAG_MS="10000",  # refusals by live calls only, not by a loaded machine
        HTTP_KEEP_ALIVE_S="300",
        TMPDIR=str(run_tmp),
    )
    with run_gateway("", tmp_path, env, workers=2) as gateway:
        pids = await _all_ready(gateway, 2)
        [metrics_dir] = run_tmp.glob("voice-gateway-metrics-*")
        assert sorted(p.name for p in metrics_dir.iterdir()) == ["worker-0.json", "worker-1.json"]
        async with contextlib.AsyncExitStack() as stack:
            on = {w: await _client_on(gateway, w, stack) for w in (0, 1)}
            refused = await _refuse(on[0], gateway, 0, 3) + await _refuse(on[1], gateway, 1, 4)
            assert refused == 5  # 2 on worker 0, 3 on worker 1

            await _until_total(on, REFUSED, refused)
            for _ in range(5):  # whichever worker answers, the gateway's totals
                for worker, http in on.items():
                    text = await _scrape(http, worker)
                    assert _value(text, REFUSED) == refused, (worker, text)
                    assert _value(text, "voice_gateway_workers") == 2
                    assert _value(text, "voice_gateway_calls_active") == 0

            # Worker 1 killed: the survivor's scrapes keep its counts while it is dead and
            # once it is started again.
            os.kill(pids[1], signal.SIGKILL)  # its client's connection went with it

            async def restarted() -> bool:
                text = await _scrape(on[0], 0)
                assert _value(text, REFUSED) == refused, text
                assert _value(text, "voice_gateway_workers") in (1, 2)
                return len(_ready_pids(gateway).get(1, [])) == 2

            await _until("worker 1 to be started again", restarted)

            async def both_live() -> bool:
                text = await _scrape(on[0], 0)
                assert _value(text, REFUSED) == refused, text
                return _value(text, "voice_gateway_workers") == 2

            await _until("the new worker 1 to publish", both_live)

            # The new worker 1 counts on from its predecessor's total.
            new_1 = await _client_on(gateway, 1, stack)
            more = await _refuse(new_1, gateway, 1, 3)
            assert more == 2
            on = {0: on[0], 1: new_1}
            await _until_total(on, REFUSED, refused + more)
            for _ in range(3):
                for worker, http in on.items():
                    text = await _scrape(http, worker)
                    assert _value(text, REFUSED) == refused + more, (worker, text)
                    assert _value(text, "voice_gateway_workers") == 2
    assert not metrics_dir.exists()  # the run's metrics directory went with it
