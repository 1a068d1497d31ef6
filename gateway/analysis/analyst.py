"""`CallAnalyst`: runs the post-call analyses finished calls owe, outside the calls.

Every gateway runs one. The write that finishes a call makes its analysis owed
(`storage.analyses`); the analyst claims a call's analysis by its id when poked with it (a
call ended here, a re-run was asked for: no scan), and looks for owed analyses every
`poll_s` (calls another gateway or the sweeper finished, analyses left unpublished:
finding them reads every call on FerretDB, so seldom). It claims each under a lease, so
two gateways never run the same one; one whose gateway stopped mid-way is run again by any
gateway once the lease has passed. For each: the plan is run on the stored transcript
(`gateway.analysis.analyze`), the result stored (only while the claim still holds), then
published through `AnalysisEvents`, and only then is it owed no more, so a gateway stopped
in between publishes it again (publishers are idempotent).

`call.analyzed` goes out after the call's report: while the report is not queued yet (it
waits for the recording), publishing raises `EventNotDue` at once and the stored analysis
stays owed, holding no slot: the outbox publishes it as soon as it queued the report, and
a later poll (any gateway's) claims it and clears the flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gateway.analysis.analyze import RETRY_WINDOW_S, run_plan, skipped
from gateway.analysis.llm import AnalysisLLM
from storage import (
    AnalysisClaim,
    AnalysisRepository,
    AssistantConfig,
    AssistantRepository,
    CallAnalysis,
    CallRecord,
    CallStore,
)
from webhooks.errors import EventNotDue

log = logging.getLogger(__name__)


def _forget(
    in_flight: dict[str, asyncio.Task[None]], call_id: str, task: asyncio.Task[None]
) -> None:
    if in_flight.get(call_id) is task:
        del in_flight[call_id]


class AnalysisEvents(Protocol):
    """Where a stored analysis is announced (the event system: `call.analyzed`)."""

    async def analyzed(self, call: CallRecord) -> None:
        """`call` as stored (without turns), with its `analysis`. Called at least once per
        stored result (again after a gateway stopped before it was marked published), so an
        implementation must be idempotent; raising leaves the analysis owed (retried)."""
        ...


class CallAnalyst:
    """The post-call analysis worker of one gateway process (`run()` until cancelled)."""

    def __init__(
        self,
        *,
        analyses: AnalysisRepository,
        calls: CallStore,
        assistants: AssistantRepository,
        llm: AnalysisLLM | None,
        model_for: Callable[[AssistantConfig], str | None],
        events: AnalysisEvents,
        lease_s: float = 300.0,
        poll_s: float = 15.0,
        concurrency: int = 4,
        transcript_max_chars: int = 60_000,
        retry_window_s: float = RETRY_WINDOW_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._analyses = analyses
        self._calls = calls
        self._assistants = assistants
        self._llm = llm
        self._model_for = model_for
        self._events = events
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._max_chars = transcript_max_chars
        self._retry_window_s = retry_window_s  # a model briefly down is asked again within it
        self._clock = clock
        self.owner = "gw-" + secrets.token_hex(6)
        self._owed = True  # look at once when started: a restart finds what was left
        self._poked: deque[str] = deque()  # calls to claim by id, not found by a look
        self._again: set[str] = set()  # poked while in flight here: claimed again after
        self._wakeup = asyncio.Event()

    def poke(self, call_id: str | None = None) -> None:
        """The analysis of `call_id` became owed here (its call ended, a re-run): claim it
        now, by its id. Without an id: look for every owed analysis now, not at the poll."""
        if call_id is None:
            self._owed = True
        elif call_id not in self._poked:
            self._poked.append(call_id)
        self._wakeup.set()

    async def aclose(self) -> None:
        if self._llm is not None:
            await self._llm.aclose()

    async def run(self) -> None:
        """Claim and run owed analyses, up to `concurrency` at once, until cancelled."""
        in_flight: dict[str, asyncio.Task[None]] = {}
        queue: deque[str] = deque()  # owed calls found by the last look, not yet claimed
        last_look = -float("inf")
        try:
            while True:
                self._wakeup.clear()  # before the round: a poke during it is not lost
                try:
                    now = time.monotonic()
                    if not queue and (self._owed or now - last_look >= self._poll_s):
                        self._owed, last_look = False, now
                        queue.extend(await self._analyses.owed_analyses())
                    while self._poked:  # claimed first, by id
                        call_id = self._poked.popleft()
                        if call_id not in queue:
                            queue.appendleft(call_id)
                    while queue and len(in_flight) < self._concurrency:
                        call_id = queue.popleft()
                        running = in_flight.get(call_id)
                        if running is not None and not running.done():  # (done: forgotten soon)
                            # Asked again while it runs here (a re-run supersedes it): looked
                            # at again once that task ends.
                            self._again.add(call_id)
                            continue
                        claim = await self._analyses.claim_analysis(
                            call_id, owner=self.owner, now=self._clock(), lease_s=self._lease_s
                        )
                        if claim is None:
                            continue  # another gateway runs it, or it is done
                        task = asyncio.create_task(
                            self._run_in_task(claim), name=f"analysis-{call_id}"
                        )
                        in_flight[call_id] = task
                        task.add_done_callback(functools.partial(_forget, in_flight, call_id))
                except asyncio.CancelledError:
                    raise
                except Exception:  # the loop must outlive a failed round (database blip, ...)
                    log.exception("call analysis round failed")
                    queue.clear()
                if queue and len(in_flight) < self._concurrency:
                    continue
                # Not `wait_for`: on 3.11 it can swallow a cancellation meeting its timeout.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wakeup.wait()
        finally:
            for task in in_flight.values():
                task.cancel()  # their claims expire, and any gateway runs them again
            await asyncio.gather(*in_flight.values(), return_exceptions=True)

    async def _run_in_task(self, claim: AnalysisClaim) -> None:
        superseded = False
        try:
            superseded = not await self.run_claimed(claim)
        except EventNotDue as exc:
            # Stored, owed still: published by the outbox once the report is queued, or by
            # the claim of a later poll (the store cleared the lease).
            log.info("analysis not published yet: %s", exc, extra={"call_id": claim.call_id})
        except Exception:  # the analysis's task ends here; its claim expires, it is run again
            log.exception("call analysis failed", extra={"call_id": claim.call_id})
        finally:
            if claim.call_id in self._again or superseded:
                # A re-run asked for while this one ran: claim it now, not at the poll.
                self._again.discard(claim.call_id)
                self.poke(claim.call_id)
            self._wakeup.set()  # room for another

    async def run_claimed(self, claim: AnalysisClaim) -> bool:
        """Run, store and publish the analysis `claim` holds. False: a re-run (or another
        gateway) superseded it before it was stored, and nothing was."""
        call = await self._calls.get_call(claim.call_id)
        if call.analysis is not None and call.analysis.status != "pending":
            # Stored by a gateway that stopped before it was published: publish it only.
            await self._events.analyzed(call.model_copy(update={"turns": ()}))
            await self._analyses.analysis_published(call.id, gen=claim.gen)
            return True
        analysis = await self.analysis_of(call)
        stored = await self._analyses.store_analysis(claim, analysis, now=self._clock())
        if stored is None:
            log.info("analysis superseded before it was stored", extra={"call_id": call.id})
            return False
        log.info(
            "call analysed",
            extra={"call_id": call.id, "status": analysis.status, "reason": analysis.reason},
        )
        await self._events.analyzed(stored)
        await self._analyses.analysis_published(call.id, gen=claim.gen + 1)
        return True

    async def analysis_of(self, call: CallRecord) -> CallAnalysis:
        """The call's analysis per its assistant's plan (skipped when there is nothing to run)."""
        assistant = await self._assistants.get_any(call.assistant_id) if call.assistant_id else None
        plan = assistant.config.analysis if assistant is not None else None
        if assistant is None or plan is None or plan.empty():
            return skipped("no analysis plan", now=self._clock())
        model = self._model_for(assistant.config)
        if model is None or self._llm is None:
            return skipped("no LLM configured", now=self._clock())
        if not any(t.text.strip() for t in call.turns):
            return skipped("no transcript", now=self._clock())
        return await run_plan(
            self._llm,
            plan,
            call.turns,
            model=model,
            max_chars=self._max_chars,
            clock=self._clock,
            retry_window_s=self._retry_window_s,
        )
