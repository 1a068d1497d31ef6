"""CPU the gateway spends on one streamed chat-completions request (the agent's reply).

Starts the OpenAI fake of tests/fakes (it answers at once) and, for each round and each
side (`--sides name=ROOT,...`: a source tree, e.g. an export of the commit before a
change), runs a child process that imports `OpenAIChatLLM` from that tree and asks
`--requests` replies on a `--history`-message conversation, timing its own CPU
(`time.process_time`: the fake's work is in another process). Prints ms of CPU per
request per run and the median per side.

    python bench/llm_cpu_bench.py --sides before=/tmp/base,after=. [--rounds 3]
        [--requests 200] [--history 12] [--said "what are your hours"]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from workers_bench import _free_port, _wait_up  # noqa: E402

KEY = "test-openai-key"  # the fake's key


async def _measure(base_url: str, requests: int, history: int, said: str) -> float:
    """ms of this process's CPU per reply (after a warm-up)."""
    from gateway.providers.base import ChatMessage
    from gateway.providers.openai_llm import OpenAIChatLLM

    llm = OpenAIChatLLM(
        api_key=KEY,
        base_url=base_url,
        model="fake-model",
        system_prompt="You are a phone agent for a bicycle shop. " * 8,
        greeting="Hello.",
    )
    turns = [
        ChatMessage("user" if i % 2 == 0 else "assistant", "a few words of the conversation " * 3)
        for i in range(history)
    ]
    messages = [ChatMessage("system", "You are a phone agent. " * 8), *turns]
    messages.append(ChatMessage("user", said))

    async def reply() -> None:
        async for _ in llm.respond(messages, call_id="bench"):
            pass

    try:
        for _ in range(20):
            await reply()
        started = time.process_time()
        for _ in range(requests):
            await reply()
        return 1000.0 * (time.process_time() - started) / requests
    finally:
        await llm.aclose()


def _child(args: argparse.Namespace) -> None:
    ms = asyncio.run(_measure(args.base_url, args.requests, args.history, args.said))
    sys.stdout.write(json.dumps({"ms": ms}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default=f"now={ROOT}", help="name=ROOT,... source trees")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--history", type=int, default=12, help="messages before the question")
    parser.add_argument("--said", default="what are your hours", help="the question")
    parser.add_argument("--base-url", help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.base_url:
        _child(args)
        return
    sides = [tuple(side.split("=", 1)) for side in args.sides.split(",")]
    port = _free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.fakes.openai_server:app", "--port", str(port),
         "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _ in sides}
    try:
        _wait_up(f"http://127.0.0.1:{port}/control/log", fake)
        sys.stdout.write(
            f"{args.requests} replies a run, {args.history} messages of history, "
            f"question {args.said!r}\n"
        )
        for round_no in range(1, args.rounds + 1):
            for name, root in sides:
                run = subprocess.run(
                    [sys.executable, str(ROOT / "bench" / "llm_cpu_bench.py"),
                     "--base-url", f"http://127.0.0.1:{port}/v1", "--requests",
                     str(args.requests), "--history", str(args.history), "--said", args.said],
                    cwd=root, env={**os.environ, "PYTHONPATH": str(Path(root).resolve())},
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                ms = json.loads(run.stdout.strip().splitlines()[-1])["ms"]
                results[name].append(ms)
                sys.stdout.write(f"round {round_no} {name:>8}: {ms:6.2f} ms CPU per reply\n")
                sys.stdout.flush()
        for name, values in results.items():
            sys.stdout.write(f"median {name:>8}: {statistics.median(values):6.2f} ms\n")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
