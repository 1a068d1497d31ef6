"""One call's analysis: the plan run on the stored transcript, with one retry.

An answer that is not a JSON object, or misses a requested part, or whose `data` does not
match the schema gets ONE retry, told what was wrong. After it:
- a JSON object -> `done`; structured data still invalid is kept as given, `data_error`
  says why (a summary or success verdict that came back is worth keeping);
- never a JSON object (garbage twice), or the model unreachable / an HTTP error -> `failed`
  with the reason (an earlier usable JSON object is kept as `done` instead).

A request the provider failed in a way worth retrying (no connection, a timeout, 5xx, 408,
429: `ProviderError.retryable`) is sent again after a short backoff, `PROVIDER_BACKOFF_S`,
while the time since its first try stays within `retry_window_s` (the analysis timeout: a
request that timed out has used it up); only then is it a failure. Any other 4xx fails at
once. The log says what was wrong with an answer by JSON path and schema keyword only: the
full text quotes what the model took from the transcript (the caller's words).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from gateway.analysis.answer import Reading, analysis_messages, read_answer, retry_message
from gateway.analysis.llm import AnalysisLLM, LLMAnswer
from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage
from storage import AnalysisPlan, AnalysisUsage, CallAnalysis, TurnRecord

log = logging.getLogger(__name__)

ATTEMPTS = 2  # the first answer and one retry
# The waits before the 2nd and 3rd try of a request the provider failed (3 tries, ~8 s).
PROVIDER_BACKOFF_S = (2.0, 6.0)
RETRY_WINDOW_S = 60.0  # the default analysis timeout (settings ANALYSIS_TIMEOUT_S)


def skipped(reason: str, *, now: datetime) -> CallAnalysis:
    return CallAnalysis(status="skipped", reason=reason, completed_at=now)


async def _ask(
    llm: AnalysisLLM,
    *,
    model: str,
    messages: Sequence[ChatMessage],
    backoff_s: Sequence[float],
    window_s: float,
    sleep: Callable[[float], Awaitable[None]],
    monotonic: Callable[[], float],
) -> LLMAnswer:
    """One answer of `model`, the request sent again after a retryable `ProviderError`
    (see the module's docstring); the last `ProviderError` once the tries are used up."""
    first = monotonic()
    for delay in (*backoff_s, None):
        try:
            return await llm.complete(model=model, messages=messages)
        except ProviderError as exc:
            if delay is None or not exc.retryable or monotonic() - first + delay > window_s:
                raise
            log.info(
                "the analysis model failed, asking again in %.0f s: %s",
                delay,
                exc,
                extra={"provider": exc.provider, "status": exc.status},
            )
            await sleep(delay)
    raise AssertionError("unreachable")  # the last try returns or raises


async def run_plan(
    llm: AnalysisLLM,
    plan: AnalysisPlan,
    turns: Sequence[TurnRecord],
    *,
    model: str,
    max_chars: int,
    clock: Callable[[], datetime],
    backoff_s: Sequence[float] = PROVIDER_BACKOFF_S,
    retry_window_s: float = RETRY_WINDOW_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
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
            answer = await _ask(
                llm,
                model=model,
                messages=messages,
                backoff_s=backoff_s,
                window_s=retry_window_s,
                sleep=sleep,
                monotonic=monotonic,
            )
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
        # What was wrong by JSON path and keyword only: `problems` quotes the transcript.
        log.info("analysis answer unusable", extra={"problems": list(reading.faults)})
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
