"""The floor under a Twilio call's CPU: uvicorn and Starlette receiving Media Streams
messages (50 a second per socket, Twilio's shape and size) and doing nothing with them,
with uvicorn's own `websockets-sansio` protocol against the gateway's `FastFrameProtocol`.

A server process (uvloop, one Starlette WebSocket route that reads and drops, or also
parses each message as the gateway does with `--parse`) and a load process (`--sockets`
clients on the `websockets` library, sending on a 20 ms schedule) run per side, in turn,
`--rounds` times; the server's CPU over a `--seconds` window is given as % of a core per
socket (and the kernel's share of it: reads, epoll), and divided by `speed_probe.py`'s
median (the host's speed at the time).

    python bench/ws_floor_bench.py [--sockets 64] [--seconds 15] [--rounds 3] [--parse]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from speed_probe import speed_probe
from workers_bench import _cpu_split_s, _free_port

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("uvicorn", "fast")


def _serve(port: int, side: str, parse: bool) -> None:
    """The server process: one route that reads every message (and parses it if `parse`)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from gateway.ws_protocol import FastFrameProtocol
    from telephony.twilio.messages import parse_message

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if parse:
                parse_message(message["text"])

    uvicorn.run(
        Starlette(routes=[WebSocketRoute("/ws", endpoint)]),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        ws=FastFrameProtocol if side == "fast" else "websockets-sansio",
        ws_ping_interval=None,
        ws_per_message_deflate=False,
        log_level="warning",
        lifespan="off",
    )


async def _caller(port: int, seconds: float) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None, ping_interval=None) as ws:
        start, n = time.monotonic(), 0
        sid = "MZ" + "0" * 32
        while time.monotonic() - start < seconds:
            payload = base64.b64encode(os.urandom(160)).decode()
            await ws.send(
                f'{{"event":"media","sequenceNumber":"{n + 2}","media":{{"track":"inbound",'
                f'"chunk":"{n + 1}","timestamp":"{n * 20}","payload":"{payload}"}},'
                f'"streamSid":"{sid}"}}'
            )
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))


def _load(port: int, sockets: int, seconds: float) -> None:
    """The load process: `sockets` callers for `seconds`."""
    import uvloop

    async def run() -> None:
        await asyncio.gather(*(_caller(port, seconds) for _ in range(sockets)))

    uvloop.run(run())


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not start")


def _run(side: str, args: argparse.Namespace) -> dict[str, float]:
    port = _free_port()
    me = [sys.executable, __file__]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parse = ["--parse"] if args.parse else []
    server = subprocess.Popen([*me, "--serve", str(port), side, *parse], env=env)
    try:
        _wait_listening(port)
        ramp_s = 5.0
        load = subprocess.Popen(
            [*me, "--load", str(port), str(args.sockets), str(ramp_s + args.seconds + 3)],
            env=env,
        )
        with speed_probe() as probe:
            time.sleep(ramp_s)
            (user0, kernel0), t0 = _cpu_split_s(server.pid), time.monotonic()
            time.sleep(args.seconds)
            (user1, kernel1), t1 = _cpu_split_s(server.pid), time.monotonic()
        load.wait(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    cpu = user1 + kernel1 - user0 - kernel0
    per_socket = 100 * cpu / (t1 - t0) / args.sockets
    kernel = (kernel1 - kernel0) / max(1e-9, cpu)
    return {"per_socket": per_socket, "kernel": kernel, "probe_ms": probe.median_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parse", action="store_true", help="parse each message too")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(int(args.serve[0]), args.serve[1], args.parse)
        return 0
    if args.load:
        _load(int(args.load[0]), int(args.load[1]), float(args.load[2]))
        return 0
    sys.stdout.write(
        f"{args.sockets} sockets, 50 messages a second each; {args.seconds:g} s window"
        f"{'; each message parsed' if args.parse else ''}\n"
        f"{'round':>5} {'side':>8} {'%/socket':>9} {'kernel':>6} {'probe ms':>8} {'norm':>6}\n"
    )
    results: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    for rnd in range(1, args.rounds + 1):
        for side in SIDES:
            r = _run(side, args)
            r["norm"] = r["per_socket"] / r["probe_ms"]
            results[side].append(r)
            sys.stdout.write(
                f"{rnd:>5} {side:>8} {r['per_socket']:>9.3f} {100 * r['kernel']:>5.0f}% "
                f"{r['probe_ms']:>8.3f} "
                f"{r['norm']:>6.3f}\n"
            )
            sys.stdout.flush()
    sys.stdout.write("medians (% of a core per socket; the same divided by the probe's ms):\n")
    for side, runs in results.items():
        sys.stdout.write(
            f"  {side:>8}: {statistics.median(r['per_socket'] for r in runs):.3f} %/socket, "
            f"norm {statistics.median(r['norm'] for r in runs):.3f}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
