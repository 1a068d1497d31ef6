"""Post-call analysis benchmark: end of call -> `call.analyzed` received, p50 / p95.

An embedded FerretDB (the default store), the OpenAI wire fake (answering at once) under
uvicorn on loopback, a webhook receiver on loopback, and in this process what a gateway
runs after a call: the `WebhookOutbox`, the `CallEvents` publisher and one `CallAnalyst`.
Calls with a transcript and an assistant's analysis plan (summary, JSON Schema data,
success) are finished one after another, each followed by the pokes the call's lifecycle
gives; the bench takes the time from `finish_call` returning to the receiver having the
call's `call.ended` and then its `call.analyzed` (which is published after it).

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from gateway.analysis import CallAnalyst, OpenAIAnalysisLLM
from storage import (
    AnalysisPlan,
    AssistantConfig,
    CallStatus,
    Database,
    Direction,
    NewCall,
    Speaker,
    open_database,
)
from tests.ferretdb_server import embedded_ferretdb
from tests.net import free_port
from tests.webhook_receiver import ReceivedWebhook, WebhookReceiver, run_webhook_receiver
from webhooks.call_events import CallEvents
from webhooks.outbox import RetryPolicy, WebhookOutbox
from webhooks.ssrf import SsrfGuard

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "resolved": {"type": "boolean"}},
    "required": ["order_id", "resolved"],
}


async def arrival(receiver: WebhookReceiver, call_id: str, event: str) -> ReceivedWebhook:
    """The receiver's request carrying `event` of `call_id`, once it has arrived."""
    while True:
        for request in receiver.accepted():
            body = request.json()
            if body["type"] == event and body["call"]["id"] == call_id:
                return request
        await asyncio.sleep(0.002)


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


async def run(mongo_url: str, openai_url: str, calls: int, receiver: WebhookReceiver) -> None:
    database = await open_database(mongo_url, "analysis_bench")
    llm = OpenAIAnalysisLLM(api_key="test-openai-key", base_url=openai_url, timeout_s=10)
    outbox: WebhookOutbox | None = None

    def wake() -> None:
        if outbox is not None:
            outbox.wake()

    events = CallEvents(
        events=database.events, webhooks=database.webhooks, assistants=database.assistants,
        on_queued=wake,
    )  # fmt: skip
    outbox = WebhookOutbox(
        webhooks=database.webhooks, calls=database.calls, assistants=database.assistants,
        guard=SsrfGuard(["127.0.0.1"]), policy=RetryPolicy(), events=events,
    )  # fmt: skip
    analyst = CallAnalyst(
        analyses=database.analyses, calls=database.calls, assistants=database.assistants,
        llm=llm, model_for=lambda config: "fake-model", events=events,
    )  # fmt: skip
    workers = [asyncio.create_task(analyst.run()), asyncio.create_task(outbox.run())]
    try:
        org = await database.accounts.ensure_organization("bench")
        plan = AnalysisPlan(summary_prompt="Summarise.", structured_data_schema=SCHEMA,
                            success_criteria="The caller got an answer.")  # fmt: skip
        config = AssistantConfig(
            name="A", system_prompt="Help.", analysis=plan, webhook_url=receiver.url
        )
        assistant = await database.assistants.create(org.id, config)
        to_ended: list[float] = []
        to_analyzed: list[float] = []
        done = 0
        for n in range(calls):
            call_id = await finished_call(database, assistant.id, org.id, n)
            await database.calls.finish_call(
                call_id, status=CallStatus.COMPLETED, end_reason="caller-hung-up",
                ended_at=datetime.now(UTC),
            )  # fmt: skip
            ended = time.perf_counter()
            outbox.poke()  # as the call's lifecycle does once the call is finished
            analyst.poke()
            report = await asyncio.wait_for(arrival(receiver, call_id, "call.ended"), 30)
            analyzed = await asyncio.wait_for(arrival(receiver, call_id, "call.analyzed"), 30)
            to_ended.append((report.arrived - ended) * 1000)
            to_analyzed.append((analyzed.arrived - ended) * 1000)
            done += analyzed.json()["analysis"]["status"] == "done"
        print(f"calls: {calls}, analyses done: {done}")
        for what, values in (("call.ended", to_ended), ("call.analyzed", to_analyzed)):
            print(
                f"end of call -> {what} received (ms): "
                f"p50 {statistics.median(values):.1f}  p95 {percentile(values, 0.95):.1f}  "
                f"max {max(values):.1f}"
            )
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await analyst.aclose()
        await outbox.aclose()
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
        with (
            tempfile.TemporaryDirectory() as tmp,
            embedded_ferretdb(Path(tmp)) as server,
            run_webhook_receiver("/hooks/analysis") as receiver,
        ):
            asyncio.run(run(server.url, f"http://127.0.0.1:{port}/v1", args.calls, receiver))
    finally:
        fake.terminate()
        fake.wait()


if __name__ == "__main__":
    main()
