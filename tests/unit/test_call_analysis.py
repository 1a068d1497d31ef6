"""The pure parts of post-call analysis: the plan's schema check, the request, reading the
model's answer, and the one retry (through a scripted `AnalysisLLM`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from gateway.analysis.analyze import run_plan
from gateway.analysis.answer import analysis_messages, read_answer, transcript_text
from gateway.analysis.llm import LLMAnswer
from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage
from storage import AnalysisPlan, AssistantConfig, CallAnalysis, TurnRecord

SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
}
PLAN = AnalysisPlan(summary_prompt="Summarise.", structured_data_schema=SCHEMA,
                    success_criteria="Resolved.")  # fmt: skip
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _turn(index: int, speaker: str, text: str) -> TurnRecord:
    return TurnRecord.model_validate(
        {"id": str(index), "call_id": "c", "index": index, "speaker": speaker, "text": text,
         "start_ms": 0, "end_ms": 1, "interrupted": False, "created_at": NOW}
    )  # fmt: skip


TURNS = [_turn(0, "agent", "Hello"), _turn(1, "caller", "where is my order")]


def test_an_invalid_json_schema_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as refused:
        AssistantConfig.model_validate(
            {"name": "A", "system_prompt": "x", "analysis": {"structured_data_schema": {"type": 3}}}
        )
    assert refused.value.errors()[0]["loc"] == ("analysis", "structured_data_schema")
    assert AnalysisPlan().empty() and not PLAN.empty()


def test_the_request_names_each_part_and_carries_the_transcript() -> None:
    system, user = analysis_messages(PLAN, TURNS, max_chars=1000)
    assert '"summary"' in system.content and '"order_id"' in system.content
    assert '"success"' in system.content and "Resolved." in system.content
    assert user.content.endswith("Agent: Hello\nCaller: where is my order")
    assert (
        transcript_text(TURNS, max_chars=30)
        == "[earlier turns left out]\nCaller: where is my order"
    )


def test_answers_are_read_against_the_plan() -> None:
    good = read_answer(
        '{"summary": "s", "data": {"order_id": "A"}, "success": true, "success_reason": "r"}', PLAN
    )
    assert (good.problems, good.summary, good.data, good.success) == (
        (),
        "s",
        {"order_id": "A"},
        True,
    )
    bad = read_answer('{"summary": "s", "data": {"order_id": 1}, "success": "yes"}', PLAN)
    assert bad.is_object and bad.data == {"order_id": 1}
    assert bad.data_error == "at order_id: 1 is not of type 'string'"
    assert len(bad.problems) == 2 and bad.success is None
    assert not read_answer("not json", PLAN).is_object
    assert not read_answer("[1]", PLAN).is_object
    # Parts the plan does not ask for are ignored.
    only = read_answer('{"summary": "s", "data": 5}', AnalysisPlan(summary_prompt="S."))
    assert (only.problems, only.data) == ((), None)


class Scripted:
    def __init__(self, *answers: str | ProviderError) -> None:
        self.answers = list(answers)
        self.requests: list[Sequence[ChatMessage]] = []

    async def complete(self, *, model: str, messages: Sequence[ChatMessage]) -> LLMAnswer:
        self.requests.append(messages)
        answer = self.answers.pop(0)
        if isinstance(answer, ProviderError):
            raise answer
        return LLMAnswer(answer, 10, 2)

    async def aclose(self) -> None:
        return None


class Waits:
    """`sleep` and `monotonic` on a virtual clock: each wait moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waited: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waited.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def _run(
    llm: Scripted,
    plan: AnalysisPlan = PLAN,
    waits: Waits | None = None,
    retry_window_s: float = 60.0,
) -> CallAnalysis:
    waits = waits or Waits()
    return asyncio.run(
        run_plan(
            llm,
            plan,
            TURNS,
            model="m",
            max_chars=1000,
            clock=lambda: NOW,
            retry_window_s=retry_window_s,
            sleep=waits.sleep,
            monotonic=waits.monotonic,
        )
    )


def _down(status: int | None = 500) -> ProviderError:
    return ProviderError(f"the model answered HTTP {status}", provider="openai", status=status)


VALID = '{"summary": "s", "data": {"order_id": "A"}, "success": false}'
INVALID = '{"summary": "s", "data": {}, "success": false}'


def test_an_invalid_answer_is_retried_once_with_what_was_wrong() -> None:
    llm = Scripted(INVALID, VALID)
    result = _run(llm)
    assert result.status == "done" and result.attempts == 2
    assert result.data == {"order_id": "A"} and result.data_error is None
    assert result.usage is not None and result.usage.prompt_tokens == 20
    retry = llm.requests[1]
    assert retry[-2] == ChatMessage("assistant", INVALID)
    assert "'order_id' is a required property" in retry[-1].content


def test_data_still_invalid_is_kept_with_its_error_and_garbage_fails() -> None:
    kept = _run(Scripted(INVALID, INVALID))
    assert (kept.status, kept.summary, kept.data) == ("done", "s", {})
    assert kept.data_error == "at (root): 'order_id' is a required property"
    garbage = _run(Scripted("nope", "still nope"))
    assert garbage.status == "failed" and "JSON" in (garbage.reason or "")
    # A usable first answer survives a retry the model did not answer (3 tries).
    half = _run(Scripted(INVALID, *[ProviderError("timeout", provider="openai")] * 3))
    assert half.status == "done" and half.data_error is not None


def test_a_provider_briefly_down_is_asked_again_after_a_backoff() -> None:
    for error in (_down(500), _down(429), _down(408), _down(None)):  # None: no connection
        waits = Waits()
        llm = Scripted(error, VALID)
        result = _run(llm, waits=waits)
        assert (result.status, result.attempts) == ("done", 1), error
        assert waits.waited == [2.0] and llm.requests[0] == llm.requests[1]


def test_a_provider_down_for_every_try_fails_with_the_reason() -> None:
    waits = Waits()
    llm = Scripted(_down(), _down(), _down(503))
    down = _run(llm, waits=waits)
    assert (down.status, down.reason, down.attempts) == ("failed", "the model answered HTTP 503", 0)
    assert waits.waited == [2.0, 6.0] and len(llm.requests) == 3


def test_a_refusal_fails_at_once_and_retries_stay_within_the_window() -> None:
    waits = Waits()
    refused = _run(Scripted(_down(400)), waits=waits)
    assert (refused.status, refused.reason) == ("failed", "the model answered HTTP 400")
    assert waits.waited == []
    # A try that used the window up (a timeout as long as the analysis timeout) is the last.
    waits = Waits()

    class Slow(Scripted):
        async def complete(self, *, model: str, messages: Sequence[ChatMessage]) -> LLMAnswer:
            waits.now += 5.0
            return await super().complete(model=model, messages=messages)

    slow = _run(Slow(_down(None), _down(None), VALID), waits=waits, retry_window_s=10.0)
    assert slow.status == "failed" and waits.waited == [2.0]  # 5 + 2 + 5 + 6 > 10


def test_the_log_names_what_was_wrong_without_the_transcripts_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = '{"summary": "s", "data": {"order_id": 4111111111111111}, "success": false}'
    with caplog.at_level("INFO", logger="gateway.analysis.analyze"):
        kept = _run(Scripted(secret, secret))
    assert "4111111111111111" in (kept.data_error or "")  # the operator's own record
    logged = [r for r in caplog.records if r.getMessage() == "analysis answer unusable"]
    assert logged and all("4111111111111111" not in str(r.__dict__) for r in caplog.records)
    problems = logged[0].__dict__["problems"]  # the record's `extra`
    assert problems == ['"data" does not match the JSON Schema at order_id: type']
