"""CPU per call, one gateway process: silent and talking calls on the cloud-provider fakes,
one code tree against another, interleaved (A, B, A, B) because a shared machine drifts.

Starts the Deepgram, OpenAI and Cartesia fakes of tests/fakes once; then, for each round and
each side (`--sides name=ROOT,...`: a source tree, e.g. an export of the commit before a
change), starts `voice-gateway serve --workers 1` from that tree (energy VAD, silence end of
turn, embedded FerretDB, a new one for each run) and runs `bench/workers_bench.py`'s level:
`--silent` calls that stay quiet after the greeting, then (another gateway) `--talking`
calls that ask a question every few seconds. Reports per run: the gateway's CPU over the
steady window (% of one core, and per call; FerretDB apart; the kernel's share of it: socket
reads and writes, epoll), late outbound frames, and
reply latency p50 / p99 (end of speech to first frame out), and the host's speed over the
run (`speed_probe.py`: the CPU time of a fixed piece of work, median) with the per-call CPU
divided by it ("norm"): on a shared host the same code costs up to half as much again from
one run to the next, and the normalised figure compares runs taken minutes apart. With
`--profile DIR`, py-spy (`--pyspy`) samples the gateway during each steady window and the
top functions by own time and the chosen call paths are printed (profiling costs the
shared machine CPU: take CPU figures from runs without it).

    python bench/cpu_bench.py --sides before=/tmp/base,after=. [--silent 64] [--talking 32]
        [--rounds 2] [--seconds 20] [--ramp-s 10] [--profile DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from speed_probe import speed_probe
from workers_bench import API_KEY, _free_port, _run_level, _wait_up, provider_fakes, run_load

ROOT = Path(__file__).resolve().parent.parent

# Where the CPU goes: samples that pass through each of these frames (a sample may count
# under several), and those with the event loop's own C code on top.
PATHS = (
    ("Twilio inbound, all (receive loop per message)", re.compile(r"_MediaStream\._receive_loop")),
    (
        "  uvicorn WebSocket receive (parse, deflate, queue)",
        re.compile(r"WebSocketsSansIOProtocol\.(data_received|handle_events)"),
    ),
    ("  Twilio JSON parse (protocol)", re.compile(r"MediaStreamProtocol\.receive_text")),
    ("  caller frame to the call (lifecycle.on_audio)", re.compile(r"CallLifecycle\.on_audio")),
    ("    turn-taking feed", re.compile(r"TurnTaking\.feed")),
    ("      VAD (Endpointer.feed)", re.compile(r"Endpointer\.feed")),
    ("    STT push (DeepgramStream.push)", re.compile(r"DeepgramStream\.push")),
    ("      websockets client framing (legacy Frame.write)", re.compile(r"legacy/framing\.py")),
    ("permessage-deflate (both sockets)", re.compile(r"permessage_deflate\.py")),
    ("Twilio outbound (pacer)", re.compile(r"TwilioPacer\.run")),
    ("Deepgram results (reader)", re.compile(r"DeepgramStream\._read")),
    ("OpenAI SDK", re.compile(r"openai/")),
    ("TTS (cartesia)", re.compile(r"cartesia")),
    ("database (pymongo)", re.compile(r"pymongo/")),
)


def _summary(path: Path, top: int) -> str:
    """Top functions by own samples, and the chosen paths' share, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[re.sub(r":\d+\)$", ")", frames[-1])] += count
        for name, pattern in PATHS:
            if pattern.search(stack):
                paths[name] += count
        if frames[-1].startswith("Runner.run ("):
            paths["event loop's own C code (epoll, callbacks)"] += count
    if not total:
        return "  (no samples)\n"
    out = [f"  {total} samples; own time:\n"]
    out += [f"    {100 * n / total:5.1f} %  {name[:110]}\n" for name, n in own.most_common(top)]
    out.append("  inclusive, by path:\n")
    names = [name for name, _ in PATHS] + ["event loop's own C code (epoll, callbacks)"]
    out += [f"    {100 * paths[name] / total:5.1f} %  {name}\n" for name in names]
    return "".join(out)


@contextlib.contextmanager
def _gateway(
    args: list[str], url: str, env: dict[str, str], log: Path, root: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`serve` run from the source tree `root` (`python -m` imports from its directory)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(url, proc)
        yield proc
    finally:
        proc.terminate()  # it drains (DRAIN_TIMEOUT_S) before it exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def _profiled(
    pyspy: str | None, pid: int, out: Path, after_s: float, seconds: float
) -> Iterator[None]:
    """py-spy on `pid` for `seconds`, from `after_s` on (inside the steady window)."""
    if pyspy is None:
        yield
        return
    args = [pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
            "--nonblocking", "--duration", str(int(seconds)), "-o", str(out)]  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(
        after_s,
        lambda: procs.append(
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ),
    )
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        for proc in procs:
            proc.wait(timeout=seconds + 30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default=f"now={ROOT}", help="name=ROOT,... source trees")
    parser.add_argument("--silent", type=int, default=64)
    parser.add_argument("--talking", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="steady window")
    parser.add_argument("--ramp-s", type=float, default=10.0)
    parser.add_argument("--profile", type=Path, help="write py-spy profiles here")
    parser.add_argument("--pyspy", default="py-spy", help="the py-spy binary")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE, all sides")
    args = parser.parse_args()
    sides = [
        (s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in args.sides.split(",")
    ]
    pyspy = args.pyspy if args.profile else None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="vg-cpu-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    levels = [(m, n) for m, n in (("silent", args.silent), ("talking", args.talking)) if n]
    results: dict[tuple[str, str], list[dict[str, float]]] = collections.defaultdict(list)
    sys.stdout.write(
        f"--workers 1; steady window {args.seconds:g} s; calls started over {args.ramp_s:g} s "
        "(shared machine: load generator, fakes and gateway on the same 2 cores)\n"
        f"{'round':>5} {'side':>8} {'mode':>8} {'calls':>5} {'failed':>6} {'gw CPU %':>8} "
        f"{'%/call':>7} {'kernel':>6} {'ferret %':>8} {'frames':>7} {'late %':>7} {'reply p50':>9} "
        f"{'reply p99':>9} {'probe ms':>8} {'norm':>6}\n"
    )
    with contextlib.ExitStack() as stack:
        providers = provider_fakes(stack, env, work)
        for rnd in range(1, args.rounds + 1):
            for side, root in sides:
                for mode, calls in levels:
                    # A new gateway and database for each run: every run starts alike.
                    port = _free_port()
                    base = f"http://127.0.0.1:{port}"
                    token = uuid.uuid4().hex
                    gateway_env = {
                        **os.environ,
                        "PYTHONPATH": str(root),
                        "PUBLIC_URL": base,
                        "TWILIO_AUTH_TOKEN": token,
                        "GATEWAY_API_KEY": API_KEY,
                        "DATA_DIR": str(work / f"data-{rnd}-{side}-{mode}"),
                        "LOG_LEVEL": "WARNING",
                        **providers,
                        # Measured, not refused: admission stays out of the way.
                        "MAX_LIVE_CALLS": "1000",
                        "MAX_LOOP_LAG_MS": "10000",
                        "MAX_PENDING_STREAMS": "1000",
                        **dict(e.split("=", 1) for e in args.env),
                    }
                    gateway_env.pop("MONGODB_URL", None)
                    serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
                             "--workers", "1"]  # fmt: skip
                    log = work / f"gateway-{rnd}-{side}-{mode}.log"
                    out = (args.profile or work) / f"{side}-{mode}-{rnd}.txt"
                    with _gateway(serve, base + "/health", gateway_env, log, root) as proc:
                        level = _run_level(
                            base, token, proc.pid, 1, calls, args.seconds, mode == "talking",
                            args.ramp_s,
                        )  # fmt: skip
                        with (
                            _profiled(pyspy, proc.pid, out, args.ramp_s + 6, args.seconds - 6),
                            speed_probe() as probe,
                        ):
                            r = run_load(level)
                    r["probe_ms"] = probe.median_ms
                    r["norm"] = r["cpu_per_call"] / probe.median_ms
                    results[side, mode].append(r)
                    sys.stdout.write(
                        f"{rnd:>5} {side:>8} {mode:>8} {calls:>5} {r['failed']:>6.0f} "
                        f"{r['cpu_pct']:>8.1f} {r['cpu_per_call']:>7.3f} "
                        f"{100 * r['kernel_share']:>5.0f}% "
                        f"{r['ferretdb_pct']:>8.1f} {r['frames']:>7.0f} "
                        f"{r['late_pct']:>7.3f} {r['reply_p50']:>9.0f} {r['reply_p99']:>9.0f} "
                        f"{r['probe_ms']:>8.3f} {r['norm']:>6.3f}\n"
                    )
                    sys.stdout.flush()
                    if pyspy is not None and out.exists():
                        sys.stdout.write(_summary(out, args.top))
    sys.stdout.write(
        "medians over the runs where no call failed (a failed call leaves fewer calls to share "
        "the CPU; % of a core per call; the same divided by the probe's ms; late %; reply p50 "
        "ms):\n"
    )
    for (side, mode), every in results.items():
        runs = [r for r in every if not r["failed"]]
        if not runs:
            sys.stdout.write(f"  {side:>8} {mode:>8}: every run had failed calls\n")
            continue
        sys.stdout.write(
            f"  {side:>8} {mode:>8}: "
            f"{statistics.median(r['cpu_per_call'] for r in runs):.3f} %/call, "
            f"norm {statistics.median(r['norm'] for r in runs):.3f}, "
            f"late {statistics.median(r['late_pct'] for r in runs):.3f} %, "
            f"reply p50 {statistics.median(r['reply_p50'] for r in runs):.0f} ms "
            f"({len(runs)} of {len(every)} runs)\n"
        )
    sys.stdout.write(f"logs in {work}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
