"""Post-call analysis end to end: a real gateway process, calls from the simulated Twilio
caller, the analysis asked of the OpenAI wire fake (non-streaming, JSON mode) and read
back through the API; and the analyst's claims between workers on the real FerretDB."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from bson import ObjectId

from gateway.analysis import CallAnalyst, OpenAIAnalysisLLM
from gateway.analysis.llm import LLMAnswer
from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from gateway.providers.base import ChatMessage
from storage import (
    AnalysisPlan,
    AssistantConfig,
    CallRecord,
    CallStatus,
    Database,
    Direction,
    NewCall,
)
from storage.documents import AssistantDocument

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "resolved": {"type": "boolean"}},
    "required": ["order_id", "resolved"],
}


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.fixture(scope="module")
def analysis_gateway(
    mongo_url: str, openai_base_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_base_url,
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gw-analysis"), env) as process:
        yield process


async def _assistant(
    http: httpx.AsyncClient, key: str, number: str, **fields: Any
) -> dict[str, Any]:
    claimed = await http.post("/numbers", json={"number": number}, headers=_h(key))
    assert claimed.status_code == 201, claimed.text
    body = {
        "name": "Orders", "system_prompt": "Help.", "greeting": "Hello, how can I help?",
        "phone_numbers": [number], **fields,
    }  # fmt: skip
    created = await http.post("/assistants", json=body, headers=_h(key))
    assert created.status_code == 201, created.text
    assistant: dict[str, Any] = created.json()
    return assistant


def _plan(marker: str = "") -> dict[str, Any]:
    return {
        "summary_prompt": f"Summarise the call in one sentence. {marker}".strip(),
        "structured_data_schema": SCHEMA,
        "success_criteria": "The caller got an answer.",
    }


async def _call(
    gateway: GatewayProcess, http: httpx.AsyncClient, number: str, *, while_live: Any = None
) -> str:
    """One call to `number`: the caller asks a question, hears the answer, hangs up."""
    call = SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url,
        auth_token=gateway.auth_token, to_number=number,
    )  # fmt: skip
    await call.start(http)
    try:
        await call.wait_agent_audio(within_s=15)
        await call.wait_agent_silent()
        if while_live is not None:
            assert call.call_id is not None
            await while_live(call.call_id)
        call.say(espeak_mulaw("What are your opening hours?"))
        await call.wait_said()
        await call.wait_agent_audio(within_s=15)
        await call.wait_agent_silent()
        await call.hang_up()
        await call.wait_closed(within_s=30)
    finally:
        await call.aclose()
    assert call.call_id is not None
    return call.call_id


async def _analysed(
    http: httpx.AsyncClient, key: str, call_id: str, *, after: str | None = None
) -> dict[str, Any]:
    """The call once its analysis is no longer pending (and completed after `after`)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        call: dict[str, Any] = (await http.get(f"/calls/{call_id}", headers=_h(key))).json()
        analysis = call.get("analysis")
        if analysis is not None and analysis["status"] != "pending":
            if after is None or analysis["completed_at"] > after:
                return call
        assert asyncio.get_running_loop().time() < deadline, f"analysis stayed {analysis}"
        await asyncio.sleep(0.1)


async def test_a_call_is_analysed_with_schema_valid_data_and_can_be_rerun(
    analysis_gateway: GatewayProcess,
) -> None:
    gateway, key = analysis_gateway, analysis_gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        await _assistant(http, key, "+15557770101", analysis=_plan())

        async def refused_while_live(call_id: str) -> None:
            early = await http.post(f"/calls/{call_id}/analyze", headers=_h(key))
            assert early.status_code == 409, early.text

        call_id = await _call(gateway, http, "+15557770101", while_live=refused_while_live)
        call = await _analysed(http, key, call_id)
        analysis = call["analysis"]
        assert analysis["status"] == "done", analysis
        assert analysis["data"] == {"order_id": "A-17", "resolved": True}
        assert analysis["data_error"] is None and analysis["reason"] is None
        # The fake quotes the caller's lines of the stored transcript it was sent.
        assert analysis["summary"] == "The caller said: what are your opening hours"
        assert analysis["success"] is True and analysis["success_reason"]
        assert analysis["attempts"] == 1 and analysis["model"] == "gpt-4o-mini"
        assert analysis["usage"]["prompt_tokens"] > 0 and analysis["usage"]["completion_tokens"] > 0
        assert call["status"] == "completed"

        # Run it again: 202 with the pending state, then a newer result.
        rerun = await http.post(f"/calls/{call_id}/analyze", headers=_h(key))
        assert rerun.status_code == 202, rerun.text
        assert rerun.json()["status"] == "pending"
        again = await _analysed(http, key, call_id, after=analysis["completed_at"])
        assert again["analysis"]["status"] == "done" and again["analysis"]["attempts"] == 1

        unknown = await http.post("/calls/0123456789abcdef01234567/analyze", headers=_h(key))
        assert unknown.status_code == 404


async def test_an_invalid_first_answer_is_retried_once(analysis_gateway: GatewayProcess) -> None:
    gateway, key = analysis_gateway, analysis_gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        await _assistant(http, key, "+15557770102", analysis=_plan("fake:invalid-first"))
        call_id = await _call(gateway, http, "+15557770102")
        analysis = (await _analysed(http, key, call_id))["analysis"]
    assert analysis["status"] == "done", analysis
    assert analysis["attempts"] == 2
    assert analysis["data"] == {"order_id": "A-17", "resolved": True}
    assert analysis["data_error"] is None


async def test_a_model_briefly_down_is_asked_again_within_the_run(
    analysis_gateway: GatewayProcess, openai_base_url: str
) -> None:
    """A 500 is retryable: the same request goes again after a short backoff, and the
    analysis is `done` rather than `failed` for good."""
    gateway, key = analysis_gateway, analysis_gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        await _assistant(http, key, "+15557770106", analysis=_plan("fake:fail-first"))
        call_id = await _call(gateway, http, "+15557770106")
        analysis = (await _analysed(http, key, call_id))["analysis"]
        sent = (await http.get(openai_base_url.removesuffix("/v1") + "/control/completions")).json()
    assert analysis["status"] == "done", analysis
    assert analysis["attempts"] == 1 and analysis["reason"] is None
    assert analysis["data"] == {"order_id": "A-17", "resolved": True}
    asked = [body for body in sent if "fake:fail-first" in json.dumps(body["messages"])]
    assert len(asked) == 2 and asked[0]["messages"] == asked[1]["messages"]


async def test_garbage_fails_the_analysis_and_nothing_else(
    analysis_gateway: GatewayProcess,
) -> None:
    gateway, key = analysis_gateway, analysis_gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        await _assistant(http, key, "+15557770103", analysis=_plan("fake:garbage"))
        call_id = await _call(gateway, http, "+15557770103")
        call = await _analysed(http, key, call_id)
    analysis = call["analysis"]
    assert analysis["status"] == "failed", analysis
    assert "JSON" in analysis["reason"] and analysis["attempts"] == 2
    assert analysis["summary"] is None and analysis["data"] is None
    assert call["status"] == "completed" and call["end_reason"] == "caller-hung-up"
    assert [t["speaker"] for t in call["transcript"]][:2] == ["agent", "caller"]


async def test_no_llm_skips_and_an_invalid_schema_is_refused(
    analysis_gateway: GatewayProcess,
) -> None:
    gateway, key = analysis_gateway, analysis_gateway.api_key
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        assistant = await _assistant(
            http, key, "+15557770104", analysis=_plan(), llm_provider="local"
        )
        call_id = await _call(gateway, http, "+15557770104")
        analysis = (await _analysed(http, key, call_id))["analysis"]
        assert (analysis["status"], analysis["reason"]) == ("skipped", "no LLM configured")

        bad = {"name": "X", "system_prompt": "Help.",
               "analysis": {"structured_data_schema": {"type": "nonsense"}}}  # fmt: skip
        refused = await http.post("/assistants", json=bad, headers=_h(key))
        assert refused.status_code == 422, refused.text
        loc = refused.json()["error"]["details"][0]["loc"]
        assert loc == ["analysis", "structured_data_schema"]
        patched = await http.patch(
            f"/assistants/{assistant['id']}",
            json={"analysis": {"structured_data_schema": {"required": "order_id"}}},
            headers=_h(key),
        )
        assert patched.status_code == 422, patched.text
        assert patched.json()["error"]["details"][0]["loc"] == [
            "analysis",
            "structured_data_schema",
        ]
        # A PATCH of one field keeps the plan's others; null removes the plan.
        changed = await http.patch(
            f"/assistants/{assistant['id']}",
            json={"analysis": {"success_criteria": "The caller booked."}},
            headers=_h(key),
        )
        assert changed.status_code == 200, changed.text
        plan = changed.json()["analysis"]
        assert plan["success_criteria"] == "The caller booked."
        assert plan["structured_data_schema"] == SCHEMA
        removed = await http.patch(
            f"/assistants/{assistant['id']}", json={"analysis": None}, headers=_h(key)
        )
        assert removed.status_code == 200 and removed.json()["analysis"] is None


# A schema as operators write them: keys the store would refuse as field names.
SCHEMA_WITH_REFS = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {"order": {"type": "string", "pattern": "^A-"}},
    "type": "object",
    "properties": {
        "order_id": {"$ref": "#/$defs/order"},
        "resolved": {"type": "boolean"},
        "a.b": {"type": "string"},
    },
    "required": ["order_id", "resolved"],
}


async def test_a_schema_with_refs_and_dotted_names_is_saved_and_used(
    analysis_gateway: GatewayProcess, openai_base_url: str
) -> None:
    """`$schema`, `$defs`, `$ref` and a property named "a.b" are no field names the store
    takes: the schema is stored as JSON text, read back as given, and analyses use it."""
    gateway, key = analysis_gateway, analysis_gateway.api_key
    plan = {**_plan(), "structured_data_schema": SCHEMA_WITH_REFS}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        assistant = await _assistant(http, key, "+15557770105", analysis=plan)
        assert assistant["analysis"]["structured_data_schema"] == SCHEMA_WITH_REFS
        read = await http.get(f"/assistants/{assistant['id']}", headers=_h(key))
        assert read.json()["analysis"]["structured_data_schema"] == SCHEMA_WITH_REFS
        patched = await http.patch(
            f"/assistants/{assistant['id']}",
            json={"analysis": {"success_criteria": "The caller booked."}},
            headers=_h(key),
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["analysis"]["structured_data_schema"] == SCHEMA_WITH_REFS
        call_id = await _call(gateway, http, "+15557770105")
        analysis = (await _analysed(http, key, call_id))["analysis"]
        sent = (await http.get(openai_base_url.removesuffix("/v1") + "/control/completions")).json()
    assert analysis["status"] == "done", analysis
    assert analysis["data"] == {"order_id": "A-17", "resolved": True}
    assert analysis["data_error"] is None
    # The model was shown the schema as the operator wrote it.
    systems = [m["content"] for body in sent for m in body["messages"] if m["role"] == "system"]
    assert any(json.dumps(SCHEMA_WITH_REFS) in content for content in systems)


async def test_old_assistants_with_a_nested_schema_are_read(database: Database) -> None:
    """Assistants stored before the schema was kept as JSON text hold it nested."""
    org = await database.accounts.ensure_organization("acme")
    created = await database.assistants.create(
        org.id, AssistantConfig(name="A", system_prompt="Help.")
    )
    nested = {"summary_prompt": "Summarise.", "structured_data_schema": SCHEMA}
    await AssistantDocument.get_pymongo_collection().update_one(
        {"_id": ObjectId(created.id)}, {"$set": {"analysis": nested}}
    )
    stored = await database.assistants.get(org.id, created.id)
    assert stored.config.analysis == AnalysisPlan(
        summary_prompt="Summarise.", structured_data_schema=SCHEMA
    )


# ----------------------------------------------------------- workers and claims


class HeldLLM:
    """Forwards to the real client once `release` is set (a worker stopped mid-way)."""

    def __init__(self, inner: OpenAIAnalysisLLM) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def complete(self, *, model: str, messages: Any) -> LLMAnswer:
        self.entered.set()
        await self.release.wait()
        return await self.inner.complete(model=model, messages=messages)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Published:
    """`AnalysisEvents` that keeps what it was given; fails the first `fail` calls."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[CallRecord] = []
        self.fail = fail
        self.changed = asyncio.Event()

    async def analyzed(self, call: CallRecord) -> None:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("the event system is down")
        self.calls.append(call)
        self.changed.set()


@pytest.fixture
async def llm(openai_base_url: str) -> AsyncIterator[OpenAIAnalysisLLM]:
    client = OpenAIAnalysisLLM(api_key="test-openai-key", base_url=openai_base_url, timeout_s=10)
    try:
        yield client
    finally:
        await client.aclose()


async def _finished_call(database: Database, plan: AnalysisPlan | None) -> str:
    org = await database.accounts.ensure_organization("acme")
    assistant = await database.assistants.create(
        org.id, AssistantConfig(name="A", system_prompt="Help.", analysis=plan)
    )
    started = datetime.now(UTC) - timedelta(seconds=30)
    call = await database.calls.create_call(
        NewCall(
            org_id=org.id, transport="twilio", call_sid="CA" + "0" * 32,
            from_number="+15550001111", to_number="+15550002222",
            direction=Direction.INBOUND, assistant_id=assistant.id,
        ),
        started_at=started,
    )  # fmt: skip
    await database.calls.add_turn(call.id, speaker="agent", text="Hello", start_ms=0, end_ms=900)
    await database.calls.add_turn(
        call.id, speaker="caller", text="where is my order", start_ms=1200, end_ms=1800
    )
    await database.calls.finish_call(
        call.id, status=CallStatus.COMPLETED, end_reason="caller-hangup", ended_at=started
    )
    return call.id


def _analyst(database: Database, llm: Any, events: Any, **options: Any) -> CallAnalyst:
    return CallAnalyst(
        analyses=database.analyses,
        calls=database.calls,
        assistants=database.assistants,
        llm=llm,
        model_for=lambda config: "fake-model",
        events=events,
        **{"lease_s": 1.0, "poll_s": 0.05, **options},
    )


async def _until(condition: Any, what: str, within_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_worker_stopped_mid_way_is_completed_by_another(
    database: Database, llm: OpenAIAnalysisLLM
) -> None:
    call_id = await _finished_call(database, AnalysisPlan(structured_data_schema=SCHEMA))
    held = HeldLLM(llm)
    first_events = Published()
    first = asyncio.create_task(_analyst(database, held, first_events, lease_s=1.0).run())
    try:
        await asyncio.wait_for(held.entered.wait(), 30)  # it holds the claim, mid-analysis
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    assert (await database.calls.get_call(call_id)).analysis.status == "pending"  # type: ignore[union-attr]

    events = Published()
    second = asyncio.create_task(_analyst(database, llm, events).run())
    try:
        await asyncio.wait_for(events.changed.wait(), 30)  # once the first claim expired
    finally:
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
    stored = await database.calls.get_call(call_id)
    assert stored.analysis is not None and stored.analysis.status == "done"
    assert stored.analysis.data == {"order_id": "A-17", "resolved": True}
    assert [c.id for c in events.calls] == [call_id] and not first_events.calls
    assert events.calls[0].analysis == stored.analysis
    assert await database.analyses.owed_analyses() == []


async def test_a_dead_gateways_claim_expires_and_its_late_result_is_refused(
    database: Database, llm: OpenAIAnalysisLLM
) -> None:
    call_id = await _finished_call(database, AnalysisPlan(summary_prompt="Summarise."))
    now = datetime.now(UTC)
    dead = await database.analyses.claim_analysis(call_id, owner="gw-dead", now=now, lease_s=1.0)
    assert dead is not None
    assert (
        await database.analyses.claim_analysis(call_id, owner="gw-other", now=now, lease_s=1.0)
        is None
    )
    events = Published()
    worker = asyncio.create_task(_analyst(database, llm, events).run())
    try:
        await asyncio.wait_for(events.changed.wait(), 30)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    stored = await database.calls.get_call(call_id)
    assert (
        stored.analysis is not None
        and stored.analysis.summary == "The caller said: where is my order"
    )
    # The dead gateway's late answer is refused: the analysis moved on without it.
    late = stored.analysis.model_copy(update={"summary": "stale"})
    assert await database.analyses.store_analysis(dead, late, now=datetime.now(UTC)) is None
    assert (await database.calls.get_call(call_id)).analysis == stored.analysis


async def test_a_failed_publish_is_published_again_without_asking_the_model_again(
    database: Database,
) -> None:
    call_id = await _finished_call(database, AnalysisPlan(summary_prompt="Summarise."))
    # Its report is queued (the poll passes over a stored analysis whose report is not:
    # the outbox publishes those once it queued the report).
    await database.webhooks.report_queued(call_id)

    class CountingLLM:
        def __init__(self) -> None:
            self.asked = 0

        async def complete(self, *, model: str, messages: list[ChatMessage]) -> LLMAnswer:
            self.asked += 1
            return LLMAnswer('{"summary": "ok"}', 10, 3)

        async def aclose(self) -> None:
            return None

    counting = CountingLLM()
    events = Published(fail=1)
    worker = asyncio.create_task(_analyst(database, counting, events, lease_s=0.5).run())

    async def settled() -> bool:  # published, then no longer owed (the flag goes after)
        return bool(events.calls) and await database.analyses.owed_analyses() == []

    try:
        await _until(settled, "published and no longer owed")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert counting.asked == 1 and len(events.calls) == 1
    assert events.calls[0].analysis is not None and events.calls[0].analysis.summary == "ok"


async def test_a_call_without_a_plan_or_llm_is_skipped(database: Database) -> None:
    no_plan = await _finished_call(database, None)
    no_llm = await _finished_call(database, AnalysisPlan(summary_prompt="Summarise."))
    events = Published()
    worker = asyncio.create_task(_analyst(database, None, events, poll_s=5.0).run())
    try:
        await _until(lambda: _count(events, 2), "both skipped")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    reasons = {c.id: (c.analysis.status, c.analysis.reason) for c in events.calls if c.analysis}
    assert reasons == {
        no_plan: ("skipped", "no analysis plan"),
        no_llm: ("skipped", "no LLM configured"),
    }


async def _count(events: Published, n: int) -> bool:
    return len(events.calls) >= n
