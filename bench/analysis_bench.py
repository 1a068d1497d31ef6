"""Post-call analysis benchmark: end of call -> analysis received, p50 / p95.

An embedded FerretDB (the default store), the OpenAI wire fake (answering at once) under
uvicorn on loopback, and one `CallAnalyst` in this process. Calls with a transcript and an
assistant's analysis plan (summary, JSON Schema data, success) are finished one after
another, each followed by the analyst's poke as the call's lifecycle does; the bench takes
the time from `finish_call` returning to the analysis being received.

"Received" is `received_at` below: today the moment the analyst hands the stored analysis
(status done) to its `AnalysisEvents`; swap it for the time a `call.analyzed` event
reaches its receiver once the event system is there.

    python bench/analysis_bench.py [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from gateway.analysis import CallAnalyst, OpenAIAnalysisLLM
from storage import (
    AnalysisPlan,
    AssistantConfig,
    CallRecord,
    CallStatus,
    Database,
    Direction,
    NewCall,
    Speaker,
    open_database,
)
from tests.ferretdb_server import embedded_ferretdb
from tests.net import free_port

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "resolved": {"type": "boolean"}},
    "required": ["order_id", "resolved"],
}


class StampedEvents:
    """`AnalysisEvents` that notes when each call's analysis was published."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self._arrived = asyncio.Condition()

    async def analyzed(self, call: CallRecord) -> None:
        self.at.setdefault(call.id, time.perf_counter())
        self.status[call.id] = call.analysis.status if call.analysis else "none"
        async with self._arrived:
            self._arrived.notify_all()

    async def published_at(self, call_id: str) -> float:
        async with self._arrived:
            await self._arrived.wait_for(lambda: call_id in self.at)
        return self.at[call_id]


# The point where an analysis counts as received: swap for the `call.analyzed` receiver.
ReceivedAt = Callable[[str], Awaitable[float]]


async def finished_call(database: Database, assistant_id: str, org_id: str, n: int) -> str:
    started = datetime.now(UTC) - timedelta(seconds=60)
    call = await database.calls.create_call(
        NewCall(
            org_id=org_id, transport="twilio", call_sid=f"CA{n:032d}",
            from_number="+15550001111", to_number="+15550002222",
            direction=Direction.INBOUND, assistant_id=assistant_id,
        ),
        started_at=started,
    )  # fmt: skip
    lines: list[tuple[Speaker, str]] = [
        ("agent", "Hello, how can I help?"), ("caller", "where is my order A-17"),
        ("agent", "It ships tomorrow."), ("caller", "great, thanks, bye"),
    ]  # fmt: skip
    for i, (speaker, text) in enumerate(lines):
        await database.calls.add_turn(
            call.id, speaker=speaker, text=text, start_ms=i * 2000.0, end_ms=i * 2000.0 + 1500
        )
    return call.id


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def run(mongo_url: str, openai_url: str, calls: int) -> None:
    database = await open_database(mongo_url, "analysis_bench")
    llm = OpenAIAnalysisLLM(api_key="test-openai-key", base_url=openai_url, timeout_s=10)
    events = StampedEvents()
    received_at: ReceivedAt = events.published_at
    analyst = CallAnalyst(
        analyses=database.analyses, calls=database.calls, assistants=database.assistants,
        llm=llm, model_for=lambda config: "fake-model", events=events,
    )  # fmt: skip
    worker = asyncio.create_task(analyst.run())
    try:
        org = await database.accounts.ensure_organization("bench")
        plan = AnalysisPlan(summary_prompt="Summarise.", structured_data_schema=SCHEMA,
                            success_criteria="The caller got an answer.")  # fmt: skip
        assistant = await database.assistants.create(
            org.id, AssistantConfig(name="A", system_prompt="Help.", analysis=plan)
        )
        latencies: list[float] = []
        for n in range(calls):
            call_id = await finished_call(database, assistant.id, org.id, n)
            await database.calls.finish_call(
                call_id, status=CallStatus.COMPLETED, end_reason="caller-hung-up",
                ended_at=datetime.now(UTC),
            )  # fmt: skip
            ended = time.perf_counter()
            analyst.poke()  # as the call's lifecycle does once the call is finished
            received = await asyncio.wait_for(received_at(call_id), 30)
            latencies.append((received - ended) * 1000)
        done = sum(1 for s in events.status.values() if s == "done")
        print(f"calls: {calls}, analyses done: {done}")
        print(
            "end of call -> analysis received (ms): "
            f"p50 {statistics.median(latencies):.1f}  p95 {percentile(latencies, 0.95):.1f}  "
            f"max {max(latencies):.1f}"
        )
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await analyst.aclose()
        await database.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.fakes.openai_server:app", "--port", str(port),
         "--log-level", "warning"],
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp, embedded_ferretdb(Path(tmp)) as server:
            asyncio.run(run(server.url, f"http://127.0.0.1:{port}/v1", args.calls))
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
