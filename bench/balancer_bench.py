"""Two gateways behind HAProxy, one drained with SIGTERM while calls run: where the calls
land, how long the drain takes, and how many calls it loses.

Two `voice-gateway serve` processes on one embedded FerretDB, Debian's HAProxy in front
(configured from `deploy/haproxy.cfg`), simulated Twilio callers whose webhooks and media
streams both go through the balancer. Each round: B is (re)started, `--calls` calls are
placed (greeting heard), B gets SIGTERM; while it drains, a new call is offered every
`--offer-every-s` and B's callers hang up one by one over `--hangup-over-s`; then the rest
hang up. Per round: calls per gateway, SIGTERM -> B's /ready 503, -> HAProxy marks B down,
-> B exits (the drain), new calls offered during the drain and where they went, calls lost
(any call not ended `completed` / `caller-hung-up`, and any offered call that failed).

    python bench/balancer_bench.py [--rounds 3] [--calls 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.exceptions import WebSocketException

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.demo.simulated_twilio import SimulatedTwilioCall  # noqa: E402
from storage import Database, open_database  # noqa: E402
from tests.balancer import Balancer, run_balancer  # noqa: E402
from tests.ferretdb_server import embedded_ferretdb  # noqa: E402
from tests.net import free_port  # noqa: E402

NUMBER = "+15550009999"
TOKEN = uuid.uuid4().hex
KEY = "bench-key-" + uuid.uuid4().hex


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Gateway:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    gateway_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def _gateway(name: str, port: int, env: dict[str, str], work: Path) -> Iterator[Gateway]:
    log = work / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    gateway = Gateway(name, port, proc, log)
    try:
        deadline = time.monotonic() + 60
        while not gateway.gateway_id:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway {name} did not start:\n{log.read_text()[-2000:]}")
            for line in log.read_text(errors="replace").splitlines():
                if '"gateway ready"' in line:
                    gateway.gateway_id = json.loads(line)["gateway_id"]
            time.sleep(0.1)
        yield gateway
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _until(what: str, check: Callable[[], Awaitable[bool]], within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@dataclass
class Round:
    per_gateway: dict[str, int] = field(default_factory=dict)
    to_not_ready_s: float = 0.0
    to_balancer_down_s: float = 0.0
    drain_s: float = 0.0
    exit_code: int | None = None
    offered: int = 0
    offered_on: dict[str, int] = field(default_factory=dict)
    offered_failed: int = 0
    lost: int = 0


class Bench:
    def __init__(self, balancer: Balancer, db: Database, a: Gateway) -> None:
        self.balancer, self.db, self.a = balancer, db, a

    async def place(self, http: httpx.AsyncClient, phones: list[SimulatedTwilioCall]) -> None:
        phone = SimulatedTwilioCall(
            base_url=self.balancer.url,
            public_url=self.balancer.url,
            auth_token=TOKEN,
            to_number=NUMBER,
        )
        phones.append(phone)
        await phone.start(http)
        await phone.wait_agent_audio(within_s=60)

    async def served_by(self, phone: SimulatedTwilioCall) -> str:
        assert phone.call_id is not None
        found: list[str] = []

        async def named() -> bool:
            call = await self.db.calls.get_call(phone.call_id or "", with_turns=False)
            found[:] = [call.served_by] if call.served_by else []
            return bool(found)

        await _until("served_by", named)
        return found[0]

    async def round(self, b: Gateway, calls: int, offer_every_s: float, hangup_s: float) -> Round:
        result = Round()
        names = {self.a.gateway_id: "a", b.gateway_id: "b"}
        phones: list[SimulatedTwilioCall] = []
        offered: list[SimulatedTwilioCall] = []
        async with httpx.AsyncClient(base_url=self.balancer.url, timeout=30) as http:
            try:
                await asyncio.gather(*(self.place(http, phones) for _ in range(calls)))
                where = {p.call_id: names[await self.served_by(p)] for p in phones}
                for name in where.values():
                    result.per_gateway[name] = result.per_gateway.get(name, 0) + 1
                on_b = [p for p in phones if where[p.call_id] == "b"]

                t0 = time.monotonic()
                b.proc.send_signal(signal.SIGTERM)
                offering = asyncio.create_task(
                    self._offer(http, offered, names, offer_every_s, hangup_s, result)
                )

                async def b_not_ready() -> bool:
                    try:
                        r = await http.get(b.url + "/ready")
                    except httpx.TransportError:
                        return True
                    return r.status_code == 503

                async def b_down() -> bool:
                    states = await asyncio.to_thread(self.balancer.server_states)
                    return states["b"].startswith("DOWN")

                await _until("B not ready", b_not_ready)
                result.to_not_ready_s = time.monotonic() - t0
                await _until("B down at the balancer", b_down)
                result.to_balancer_down_s = time.monotonic() - t0
                for i, phone in enumerate(on_b):  # B's callers hang up over `hangup_s`
                    await asyncio.sleep(
                        max(0.0, t0 + hangup_s * (i + 1) / len(on_b) - time.monotonic())
                    )
                    await phone.stop()
                await offering
                result.exit_code = await asyncio.to_thread(b.proc.wait, 120)
                result.drain_s = time.monotonic() - t0
                started = [p for p in phones + offered if p.call_id is not None]
                for phone in started:
                    await phone.stop()
                for phone in started:
                    call_id = str(phone.call_id)

                    async def ended(call_id: str = call_id) -> bool:
                        call = await self.db.calls.get_call(call_id, with_turns=False)
                        return call.ended_at is not None

                    await _until("calls ended", ended)
                    call = await self.db.calls.get_call(call_id, with_turns=False)
                    if (call.status, call.end_reason) != ("completed", "caller-hung-up"):
                        result.lost += 1
            finally:
                for phone in phones + offered:
                    await phone.aclose()
        return result

    async def _offer(
        self,
        http: httpx.AsyncClient,
        offered: list[SimulatedTwilioCall],
        names: dict[str, str],
        every_s: float,
        for_s: float,
        r: Round,
    ) -> None:
        """A new call every `every_s` for `for_s` after SIGTERM (each counted, failures too);
        each one hangs up once it heard its greeting and its gateway is known."""
        tasks: list[asyncio.Task[None]] = []
        until = time.monotonic() + for_s

        async def one() -> None:
            mine: list[SimulatedTwilioCall] = []
            try:
                await self.place(http, mine)
            except (httpx.HTTPError, WebSocketException, OSError, TimeoutError, RuntimeError):
                # a call that could not start is counted, the bench goes on
                r.offered_failed += 1
                for phone in mine:
                    await phone.aclose()
                return
            offered.extend(mine)
            name = names.get(await self.served_by(mine[0]), "?")
            r.offered_on[name] = r.offered_on.get(name, 0) + 1
            await mine[0].stop()

        try:
            while time.monotonic() < until:
                r.offered += 1
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(every_s)
        finally:
            await asyncio.gather(*tasks, return_exceptions=True)


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered):.2f} s, max {ordered[-1]:.2f} s (n={len(ordered)})"


async def _setup(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        headers = {"x-api-key": KEY}
        r = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
        r.raise_for_status()
        body = {
            "name": "Bench line",
            "system_prompt": "Help the caller.",
            "greeting": "Hello, you reached the bench line.",
            "phone_numbers": [NUMBER],
        }
        (await http.post("/assistants", json=body, headers=headers)).raise_for_status()


async def _run(args: argparse.Namespace, mongo_url: str, work: Path) -> int:
    lb_port, port_a, port_b = free_port(), free_port(), free_port()
    db_name = "balancer_bench_" + uuid.uuid4().hex[:6]
    env = {
        **os.environ,
        "MONGODB_URL": mongo_url,
        "MONGODB_DB": db_name,
        "PUBLIC_URL": f"http://127.0.0.1:{lb_port}",
        "TWILIO_AUTH_TOKEN": TOKEN,
        "GATEWAY_API_KEY": KEY,
        "DRAIN_TIMEOUT_S": str(args.drain_timeout_s),
        "LOG_LEVEL": "INFO",
    }
    rounds: list[Round] = []
    with (
        _gateway("a", port_a, env, work) as a,
        run_balancer(work, {"a": port_a, "b": port_b}, port=lb_port) as balancer,
    ):
        database = await open_database(mongo_url, db_name)
        try:
            await _setup(balancer.url)
            bench = Bench(balancer, database, a)
            for n in range(args.rounds):
                with _gateway("b", port_b, env, work) as b:

                    async def both_up() -> bool:
                        states = await asyncio.to_thread(balancer.server_states)
                        return all(s == "UP" for s in states.values())

                    await _until("both up", both_up)
                    r = await bench.round(b, args.calls, args.offer_every_s, args.hangup_over_s)
                rounds.append(r)
                _out(
                    f"round {n + 1}: calls per gateway {dict(sorted(r.per_gateway.items()))}; "
                    f"SIGTERM -> /ready 503 {r.to_not_ready_s:.2f} s, -> balancer down "
                    f"{r.to_balancer_down_s:.2f} s, -> exit {r.drain_s:.2f} s (code "
                    f"{r.exit_code}); offered during the drain {r.offered} -> "
                    f"{dict(sorted(r.offered_on.items()))}, failed {r.offered_failed}; "
                    f"calls lost {r.lost}"
                )
        finally:
            await database.close()
    _out()
    _out(f"SIGTERM -> B's /ready 503:      {_stats([r.to_not_ready_s for r in rounds])}")
    _out(f"SIGTERM -> balancer marks down: {_stats([r.to_balancer_down_s for r in rounds])}")
    _out(
        f"SIGTERM -> B exits (drain):     {_stats([r.drain_s for r in rounds])} "
        f"(its callers hang up over {args.hangup_over_s:.0f} s)"
    )
    _out(f"exit codes: {[r.exit_code for r in rounds]}")
    per_a = sum(r.per_gateway.get("a", 0) for r in rounds)
    per_b = sum(r.per_gateway.get("b", 0) for r in rounds)
    _out(f"calls per gateway before SIGTERM: a {per_a}, b {per_b}")
    offered_b = sum(r.offered_on.get("b", 0) for r in rounds)
    _out(
        f"new calls offered while B drained: {sum(r.offered for r in rounds)}, taken by B "
        f"{offered_b}, failed {sum(r.offered_failed for r in rounds)}"
    )
    _out(f"calls lost on SIGTERM: {sum(r.lost for r in rounds)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--offer-every-s", type=float, default=0.5)
    parser.add_argument("--hangup-over-s", type=float, default=5.0)
    parser.add_argument("--drain-timeout-s", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_KEEP_DIR") or tmp)
        work.mkdir(parents=True, exist_ok=True)
        with embedded_ferretdb(work / "ferretdb") as server:
            return asyncio.run(_run(args, server.url, work))


if __name__ == "__main__":
    sys.exit(main())
