"""One call from the moment a gateway takes it to its final write, the same for every
carrier (a Twilio media stream, a LiveKit room).

A carrier supplies a `CallLeg` (how the call is recorded, its transport, how the leg is
closed) and feeds the caller's events in. The lifecycle does the rest, once: lease ->
plan -> recorder -> transport -> `CallSession` -> maximum duration -> end exactly once
(whichever asks first: the caller, the agent, the carrier, the clock, shutdown) -> the
stored call finished, its report owed and the outbox poked -> the leg closed -> the lease
released.

Order of calls: `take()` when the gateway takes the call (it holds this gateway's lease
from then on); `answer()` once the caller is there (the agent greets); `on_audio()` /
`on_mark()` / `on_dtmf()` as the carrier's events arrive; `request_end()` from anywhere,
any number of times (the first reason is kept; the end runs in a task of its own, so the
agent can end its own call); `finished()` waits for the end to be done.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from audio.frames import AudioFrame
from gateway.call.plan import plan_call
from gateway.call.session import CallSession, SessionConfig
from gateway.call.transport import CallTransport
from gateway.logs import call_id_var
from gateway.metrics import GatewayMetrics
from gateway.providers.catalog import ProviderCatalog
from storage import AssistantRepository, CallRecord, CallStatus, CallStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallEnding:
    """Why a call ended, as stored."""

    reason: str
    status: CallStatus


class CallRecording(Protocol):
    """A call's recording: started when the call is answered, finished before its final
    write (so the report has it); neither raises for a store that fails."""

    def start(self) -> None: ...

    async def finish(self) -> object: ...


class LegTransport(CallTransport, Protocol):
    """A carrier's transport as the lifecycle runs it."""

    async def run(self) -> None:
        """Play queued agent audio until closed (the pacer task)."""
        ...

    def close(self) -> None:
        """Stop playing: the call is ending; nothing more is sent."""
        ...


class CallLeg(Protocol):
    """What a carrier supplies for one of its calls."""

    def recording(self) -> CallRecording:
        """The call's recording, not started yet (asked only if the call is recorded)."""
        ...

    def transport(self, recording: CallRecording | None) -> LegTransport:
        """The transport the session talks through (its pacer runs once the call is answered)."""
        ...

    async def close(self, ending: CallEnding) -> None:
        """Hang the leg up from the gateway's side; called once, after the final write."""
        ...


class ReportsOwed(Protocol):
    """Where a finished call's report goes (the webhook outbox)."""

    def poke(self) -> None: ...


class LiveCalls:
    """The calls this process serves; each holds this gateway's lease (`gateway_id`)."""

    def __init__(self, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._calls: dict[str, CallLifecycle] = {}

    def serving(self, call_id: str) -> bool:
        return call_id in self._calls

    def add(self, call: CallLifecycle) -> None:
        self._calls[call.call.id] = call

    def discard(self, call: CallLifecycle) -> None:
        if self._calls.get(call.call.id) is call:
            del self._calls[call.call.id]

    async def end_all(self, ending: CallEnding) -> None:
        """End every call this process serves and wait until each is finished (shutdown)."""
        calls = list(self._calls.values())
        for call in calls:
            call.request_end(ending.reason, ending.status)
        await asyncio.gather(*(call.finished() for call in calls))


@dataclass(frozen=True, slots=True)
class CallRuntime:
    """What every call's lifecycle needs, built once per process."""

    store: CallStore
    assistants: AssistantRepository
    catalog: ProviderCatalog
    session_config: SessionConfig
    metrics: GatewayMetrics
    reports: ReportsOwed
    live: LiveCalls
    recordings_enabled: bool  # a recordings bucket is configured


class CallLifecycle:
    """One call, from `take()` to its final write."""

    def __init__(self, runtime: CallRuntime, call: CallRecord, leg: CallLeg) -> None:
        self.call = call
        self._rt = runtime
        self._leg = leg
        self.session: CallSession | None = None
        self._transport: LegTransport | None = None
        self._recording: CallRecording | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the pacer, the maximum duration
        self._writes: list[asyncio.Task[None]] = []  # bookkeeping beside the call
        self._answering = asyncio.Lock()
        self._ending: CallEnding | None = None
        self._end_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._counted = False
        self.ended = asyncio.Event()  # set as soon as an end is requested

    # ------------------------------------------------------------------ start

    def take(self) -> None:
        """This gateway serves the call from now on: it holds the gateway's lease."""
        self._rt.live.add(self)
        self.beside(self._rt.store.set_served_by(self.call.id, self._rt.live.gateway_id), "lease")

    def beside(self, write: Coroutine[Any, Any, object], what: str) -> None:
        """Run a bookkeeping write beside the call rather than before the greeting; it is
        awaited before the call's final write (a failure is logged, the call goes on)."""
        self._writes.append(asyncio.create_task(self._logged(write, what), name=f"write-{what}"))

    @staticmethod
    async def _logged(write: Coroutine[Any, Any, object], what: str) -> None:
        try:
            await write
        except Exception:  # the write's task ends here; the call goes on
            log.exception("storing the call's %s failed", what)

    async def answer(self) -> None:
        """The caller is there: plan, recorder, transport, session; the agent greets."""
        async with self._answering:
            if self.ended.is_set():
                return
            rt = self._rt
            self.beside(rt.store.set_status(self.call.id, CallStatus.IN_PROGRESS), "status")
            plan = await plan_call(self.call, assistants=rt.assistants, catalog=rt.catalog)
            if plan.recording and rt.recordings_enabled:
                self._recording = self._leg.recording()
                self._recording.start()
            self._transport = self._leg.transport(self._recording)
            self._tasks.append(asyncio.create_task(self._transport.run(), name="pacer"))
            self.session = CallSession(
                call_id=self.call.id,
                transport=self._transport,
                providers=plan.providers,
                store=rt.store,
                config=rt.session_config,
                metrics=rt.metrics,
                on_end=self.request_end,
            )
            rt.metrics.calls_started_total += 1
            rt.metrics.calls_active += 1
            self._counted = True
            await self.session.start()
            self._tasks.append(
                asyncio.create_task(self._end_after(plan.max_duration_s), name="max-duration")
            )

    async def _end_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.info("call reached its maximum duration", extra={"seconds": seconds})
        self.request_end("max-duration", CallStatus.COMPLETED)

    # ----------------------------------------------------------------- events

    async def on_audio(self, frame: AudioFrame) -> None:
        """A frame of the caller's audio at the transport's rate."""
        if self.session is not None and not self.ended.is_set():
            await self.session.on_audio(frame)

    def on_mark(self, name: str) -> None:
        if self.session is not None:
            self.session.on_mark(name)

    async def on_dtmf(self, digit: str) -> None:
        if self.session is not None and not self.ended.is_set():
            await self.session.on_dtmf(digit)

    # -------------------------------------------------------------------- end

    def request_end(self, reason: str, status: CallStatus = CallStatus.COMPLETED) -> None:
        """End the call (idempotent: the first reason given is the one kept)."""
        if self._ending is not None:
            return
        self._ending = CallEnding(reason, status)
        self.ended.set()
        context = contextvars.copy_context()  # its log lines carry the call id
        context.run(call_id_var.set, self.call.id)
        self._end_task = asyncio.create_task(
            self._end(), name=f"end-{self.call.id}", context=context
        )

    async def finished(self) -> None:
        """Wait until the call has ended and its final write is done."""
        await self._done.wait()

    async def _end(self) -> None:
        ending = self._ending
        assert ending is not None
        async with self._answering:  # an answer under way completes (or fails) first
            pass
        try:
            await self._stop_call()
            await self._rt.store.finish_call(
                self.call.id,
                status=ending.status,
                end_reason=ending.reason,
                ended_at=datetime.now(UTC),
                usage=self.session.usage if self.session is not None else None,
            )
            log.info("call ended", extra={"reason": ending.reason, "status": str(ending.status)})
            self._rt.reports.poke()
        except Exception:  # the end's task ends here; the call, still open but no longer
            # served here, is finished as lost by this gateway's own sweeper
            log.exception("finishing the call failed")
        finally:
            try:
                await self._leg.close(ending)
            except Exception:  # nothing is left to store; the leg is logged and dropped
                log.exception("closing the call's leg failed")
            if self._counted:
                self._rt.metrics.calls_active -= 1
            self._rt.live.discard(self)
            self._done.set()

    async def _stop_call(self) -> None:
        """Everything before the final write: the agent stops (its unfinished turn is
        stored), the pacer stops, bookkeeping writes land, the recording is completed."""
        if self.session is not None:
            await self.session.close()
        if self._transport is not None:
            self._transport.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        await asyncio.gather(*self._writes)
        if self._recording is not None:
            try:
                await self._recording.finish()
            except Exception:  # the call's own final write goes on; salvage covers the rest
                log.exception("finishing the recording failed")
