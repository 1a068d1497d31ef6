"""One call's analysis: the plan run on the stored transcript, with one retry.

An answer that is not a JSON object, or misses a requested part, or whose `data` does not
match the schema gets ONE retry, told what was wrong. After it:
- a JSON object -> `done`; structured data still invalid is kept as given, `data_error`
  says why (a summary or success verdict that came back is worth keeping);
- never a JSON object (garbage twice), or the model unreachable / an HTTP error -> `failed`
  with the reason (an earlier usable JSON object is kept as `done` instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from gateway.analysis.answer import Reading, analysis_messages, read_answer, retry_message
from gateway.analysis.llm import AnalysisLLM
from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage
from storage import AnalysisPlan, AnalysisUsage, CallAnalysis, TurnRecord

log = logging.getLogger(__name__)

ATTEMPTS = 2  # the first answer and one retry


def skipped(reason: str, *, now: datetime) -> CallAnalysis:
    return CallAnalysis(status="skipped", reason=reason, completed_at=now)


async def run_plan(
    llm: AnalysisLLM,
    plan: AnalysisPlan,
    turns: Sequence[TurnRecord],
    *,
    model: str,
    max_chars: int,
    clock: Callable[[], datetime],
) -> CallAnalysis:
    """Ask `model` for the plan's parts (see the module's docstring)."""
    messages = analysis_messages(plan, turns, max_chars=max_chars)
    usage = AnalysisUsage()
    attempts = 0
    usable: Reading | None = None  # the last answer that was a JSON object
    reading: Reading | None = None
    failure: str | None = None
    for _ in range(ATTEMPTS):
        try:
            answer = await llm.complete(model=model, messages=messages)
        except ProviderError as exc:
            failure = str(exc)
            break
        attempts += 1
        usage = AnalysisUsage(
            prompt_tokens=usage.prompt_tokens + answer.prompt_tokens,
            completion_tokens=usage.completion_tokens + answer.completion_tokens,
        )
        reading = read_answer(answer.text, plan)
        if reading.is_object:
            usable = reading
        if not reading.problems:
            break
        log.info("analysis answer unusable", extra={"problems": list(reading.problems)})
        messages = [
            *messages,
            # The answer as it came (cut: a retry needs the gist, not a huge echo).
            ChatMessage("assistant", answer.text[:4000]),
            retry_message(reading),
        ]
    if usable is None:
        if failure is None:
            assert reading is not None
            failure = "the model never answered a JSON object: " + "; ".join(reading.problems)
        return CallAnalysis(
            status="failed",
            reason=failure[:1000],
            model=model,
            usage=usage,
            attempts=attempts,
            completed_at=clock(),
        )
    return CallAnalysis(
        status="done",
        summary=usable.summary,
        data=usable.data,
        data_error=usable.data_error,
        success=usable.success,
        success_reason=usable.success_reason,
        model=model,
        usage=usage,
        attempts=attempts,
        completed_at=clock(),
    )
