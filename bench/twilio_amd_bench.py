"""Voicemail on Twilio: how quickly the agent acts on an answering-machine verdict.

A real gateway on an embedded FerretDB places outbound calls through the `twilio` SDK to
the Twilio REST fake, whose scripted callees answer over Media Streams and post Twilio's
asynchronous AMD verdict when Twilio would (`tests/fakes/twilio_callee.py`). Embedded
providers (espeak-ng speaks the agent). For a person: from the `human` verdict being sent
to the first agent audio the callee plays (the greeting). For a machine
(`DetectMessageEnd`): from the end of the beep to the first audio of the message (this
includes Twilio's own beep detection delay, `amd_beep_ms` in the fake, 150 ms), and from
the `machine_end_beep` verdict being sent to the message. Calls run `--concurrency` at a
time.

    python bench/twilio_amd_bench.py [--calls 6] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ferretdb_server import embedded_ferretdb  # noqa: E402
from tests.integration.conftest import run_gateway, serve_fake  # noqa: E402

ACCOUNT = "AC" + "0" * 32
FROM = "+15557770100"
HUMAN, MACHINE = "+15550200001", "+15550200002"


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{name}: n={len(values)} median {statistics.median(values):.0f} ms, "
        f"p95 {p95:.0f} ms, max {ordered[-1]:.0f} ms"
    )


async def _one(http: httpx.AsyncClient, fake: str, key: str, assistant: str, to: str) -> Any:
    placed = await http.post(
        "/call/outbound",
        json={"assistant_id": assistant, "to_number": to, "from_number": FROM,
              "metadata": {"customer": "Dana"}},
        headers={"x-api-key": key},
    )  # fmt: skip
    placed.raise_for_status()
    sid = placed.json()["call_sid"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = (await http.get(f"{fake}/control/calls/{sid}")).json()
        if record["done"]:
            return record
        await asyncio.sleep(0.2)
    raise RuntimeError(f"call {sid} did not finish")


async def _run(args: argparse.Namespace, mongo_url: str, work: Path) -> int:
    with serve_fake("twilio_server") as fake:
        env: dict[str, str | None] = {
            "TWILIO_ACCOUNT_SID": ACCOUNT,
            "TWILIO_API_BASE_URL": fake,
            "LOG_LEVEL": "WARNING",
        }
        with run_gateway(mongo_url, work, env) as gateway:
            async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
                control = {"account_sid": ACCOUNT, "auth_token": gateway.auth_token}
                (await http.post(f"{fake}/control", json=control)).raise_for_status()
                numbers = {HUMAN: {"answer": "human", "talk_s": 5},
                           MACHINE: {"answer": "machine", "greeting": "Hi, this is Sam. "
                                     "Leave a message after the tone."}}  # fmt: skip
                (await http.post(f"{fake}/control/numbers", json=numbers)).raise_for_status()
                h = {"x-api-key": gateway.api_key}
                (await http.post("/numbers", json={"number": FROM}, headers=h)).raise_for_status()
                created = await http.post(
                    "/assistants",
                    json={"name": "bench", "system_prompt": "Be brief.",
                          "greeting": "Hello {{customer}}, this is Acme.",
                          "voicemail": {"action": "leave_message",
                                        "message": "Hi {{customer}}, please call Acme back."}},
                    headers=h,
                )  # fmt: skip
                created.raise_for_status()
                assistant = created.json()["id"]
                plan = [HUMAN, MACHINE] * args.calls
                limit = asyncio.Semaphore(args.concurrency)

                async def limited(to: str) -> tuple[str, Any]:
                    async with limit:
                        return to, await _one(http, fake, gateway.api_key, assistant, to)

                results = await asyncio.gather(*(limited(to) for to in plan))
    human_gap, beep_gap, verdict_gap, failed = [], [], [], 0
    for to, record in results:
        audio, amd = record["agent_audio"], record["amd"]
        if not audio or amd is None:
            failed += 1
            continue
        if to == HUMAN:
            human_gap.append(audio[0][0] - amd["sent_ms"])
        else:
            beep = next(s for s in record["speech"] if s["what"] == "beep")
            beep_gap.append(audio[0][0] - beep["end_ms"])
            verdict_gap.append(audio[0][0] - amd["sent_ms"])
    _out(f"calls: {len(results)} ({args.concurrency} at a time), without a verdict or audio: "
         f"{failed}")  # fmt: skip
    _out(_summary("person: human verdict sent -> greeting heard", human_gap))
    _out(_summary("machine: beep ended -> message heard", beep_gap))
    _out(_summary("machine: machine_end_beep sent -> message heard", verdict_gap))
    return 0 if failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=6, help="calls of each kind")
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(os.environ.get("BENCH_KEEP_DIR") or tmp)
        with embedded_ferretdb(work / "ferretdb") as server:
            return asyncio.run(_run(args, server.url, work))


if __name__ == "__main__":
    sys.exit(main())
