"""One call from the moment a gateway takes it to its final write, the same for every
carrier (a Twilio media stream, a LiveKit room).

A carrier supplies a `CallLeg` (how the call is recorded, its transport, how the leg is
closed) and feeds the caller's events in. The lifecycle does the rest, once: lease ->
plan -> recorder -> transport -> `CallSession` -> maximum duration -> end exactly once
(whichever asks first: the caller, the agent, the carrier, the clock, shutdown, the
database staying away) -> the call's queued writes stored -> the stored call finished, its
report owed and the outbox poked -> the recording completed (bounded: an upload left open
is salvaged by the outbox) -> the leg closed -> the lease released. The lease (the call's
place in `LiveCalls`, which keeps every sweeper off it) is held until the call is finished
in the database. Each step of the end runs even if one before it failed.

The call's turns and state go through its `CallWrites` (a bounded queue, one writer): the
conversation never waits for the database. So do its events (`CallRuntime.events`):
`call.started` when the call is taken, `call.status` in-progress behind its status write,
each `call.turn` behind its turn's write; after the final write its final `call.status`,
and `recording.ready` once the recorder completed the upload. If the database stays
away past the write policy's bound, the agent says a short goodbye and the call ends
`storage-unavailable`.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from audio.frames import AudioFrame
from gateway.call.config import SessionConfig
from gateway.call.lease import OwnEnding
from gateway.call.plan import plan_call
from gateway.call.session import CallSession
from gateway.call.transport import CallTransport
from gateway.call.voicemail import (
    VOICEMAIL,
    CalleeVerdict,
    Greet,
    HangUpOnMachine,
    VoicemailBounds,
    VoicemailGate,
    verdict_of_answered_by,
)
from gateway.call.writes import CallWrites, WriteBacklog, WritePolicy
from gateway.logs import call_id_var
from gateway.metrics import GatewayMetrics
from gateway.pricing import EXAMPLE_PRICES, PriceTable, price_call
from gateway.providers.catalog import ProviderCatalog
from storage import (
    AssistantRepository,
    CallRecord,
    CallStatus,
    CallStore,
    CallUsage,
    RecordingState,
    StorageError,
    TurnRecord,
)
from webhooks.call_events import CallEvents

log = logging.getLogger(__name__)

STORAGE_UNAVAILABLE = "storage-unavailable"
# The transports of LiveKit room calls (SIP and outbound: "livekit"; browser: "web"): each
# runs a WebRTC stack in the process, several times a Twilio call's CPU (README, Capacity).
ROOM_TRANSPORTS = frozenset({"livekit", "web"})


@dataclass(frozen=True, slots=True)
class CallEnding:
    """Why a call ended, as stored."""

    reason: str
    status: CallStatus


class CallRecording(Protocol):
    """A call's recording: started when the call is answered, finished after its final
    write, within a bound (the report waits for a recording still being completed);
    neither raises for a store that fails."""

    def start(self) -> None: ...

    async def started(self) -> None:
        """Wait until its state says it is being recorded (or failed to start)."""
        ...

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
    """Where a finished call's owed work goes (its report, its analysis)."""

    def poke(self, call_id: str) -> None: ...


class LiveCalls:
    """The calls this process serves; each holds this gateway's lease (`gateway_id`)."""

    def __init__(self, gateway_id: str, *, room_weight: int = 1) -> None:
        """`room_weight`: the places of the admission bound a LiveKit room call holds (any
        other call holds one)."""
        self.gateway_id = gateway_id
        self.room_weight = room_weight
        self._calls: dict[str, CallLifecycle] = {}
        self._weights: dict[str, int] = {}  # the places each call in `_calls` holds
        self._served_weight = 0  # their sum
        # Calls that ended here but whose final write failed (the database was away): how
        # they ended, for this gateway's sweeper to store once the database is back (a few
        # bytes per such call, only until then).
        self._unfinished: dict[str, OwnEnding] = {}
        # Calls admitted here whose leg has not arrived yet (a Twilio call between its voice
        # webhook and its media stream, an outbound call while it rings): key (CallSid or
        # call id) -> when (monotonic) the places it holds are given up, and how many.
        self._expected: dict[str, tuple[float, int]] = {}
        self._none_left = asyncio.Event()  # set while no call is served here
        self._none_left.set()

    def weight_of(self, transport: str) -> int:
        """The places of the admission bound a call on `transport` holds."""
        return self.room_weight if transport in ROOM_TRANSPORTS else 1

    def expect(self, key: str, *, hold_s: float, now: float | None = None, weight: int = 1) -> None:
        """Hold `weight` places for an admitted call until its leg arrives (`add`),
        `release(key)`, or `hold_s` passes (its leg went to another gateway, or never came)."""
        self._expected[key] = ((time.monotonic() if now is None else now) + hold_s, weight)

    def release(self, key: str) -> None:
        """The admitted call `key` is taken or given up: its place is free."""
        self._expected.pop(key, None)

    def occupancy(self, now: float | None = None) -> int:
        """The places held: by the calls served here (a room call `room_weight`) and for
        admitted calls (expired holds dropped: there are at most the admission bound)."""
        held = 0
        if self._expected:
            now = time.monotonic() if now is None else now
            for key in [k for k, (until, _) in self._expected.items() if until <= now]:
                del self._expected[key]
            held = sum(weight for _, weight in self._expected.values())
        return self._served_weight + held

    def count(self) -> int:
        """How many calls this process serves (no `__len__`: an empty one stays truthy)."""
        return len(self._calls)

    async def none_left(self) -> None:
        """Wait until this process serves no call (at once if it serves none now)."""
        await self._none_left.wait()

    def serving(self, call_id: str) -> bool:
        return call_id in self._calls

    def get(self, call_id: str) -> CallLifecycle | None:
        """The lifecycle of a call this process serves, if it does."""
        return self._calls.get(call_id)

    def snapshot(self) -> list[CallLifecycle]:
        """The calls served here now."""
        return list(self._calls.values())

    def add(self, call: CallLifecycle) -> None:
        weight = self.weight_of(call.call.transport)
        self._served_weight += weight - self._weights.get(call.call.id, 0)
        self._weights[call.call.id] = weight
        self._calls[call.call.id] = call
        self._expected.pop(call.call.id, None)  # its place was held since it was admitted
        if call.call.call_sid:
            self._expected.pop(call.call.call_sid, None)
        self._none_left.clear()

    def left_unfinished(self, call_id: str, ending: OwnEnding) -> None:
        """The call ended here but its final write failed: the sweeper stores `ending`."""
        self._unfinished[call_id] = ending

    def unfinished(self) -> dict[str, OwnEnding]:
        """The calls that ended here but are not finished in the database, and how they ended."""
        return dict(self._unfinished)

    def finished(self, call_id: str) -> None:
        """The sweeper stored the call's end (or found it stored): forget it."""
        self._unfinished.pop(call_id, None)

    def discard(self, call: CallLifecycle) -> None:
        if self._calls.get(call.call.id) is call:
            del self._calls[call.call.id]
            self._served_weight -= self._weights.pop(call.call.id, 0)
        if not self._calls:
            self._none_left.set()

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
    writes: WritePolicy = field(default_factory=WritePolicy)
    # The process's calls' writes waiting to be stored (admission judges the oldest).
    backlog: WriteBacklog = field(default_factory=WriteBacklog)
    recording_finish_timeout_s: float = 10.0  # then the outbox salvages the upload
    events: CallEvents | None = None  # None: the call publishes no events (unit tests)
    prices: PriceTable = EXAMPLE_PRICES  # what a finished call's usage costs
    voicemail: VoicemailBounds = field(default_factory=VoicemailBounds)
    outage_goodbye: str = (
        "I am sorry, I have to end this call because of a technical problem. "
        "Please call again later. Goodbye."
    )


class CallLifecycle:
    """One call, from `take()` to its final write."""

    def __init__(self, runtime: CallRuntime, call: CallRecord, leg: CallLeg) -> None:
        self.call = call
        self._rt = runtime
        self._leg = leg
        self.session: CallSession | None = None
        # An outbound call screened for a machine (its assistant has a voicemail plan): made
        # in `answer()` before the leg's transport is asked for, so a leg can add its
        # detector (`add_listener`); fed by carrier verdicts (`/twilio/amd`).
        self.callee_gate: VoicemailGate | None = None
        self._transport: LegTransport | None = None
        self._recording: CallRecording | None = None
        self._tasks: list[asyncio.Task[None]] = []  # the pacer, the maximum duration
        self._writes = CallWrites(
            call_id=call.id,
            policy=runtime.writes,
            on_outage=self._storage_outage,
            backlog=runtime.backlog,
        )
        self._answering = asyncio.Lock()
        self._ending: CallEnding | None = None
        self._ended_at = datetime.now(UTC)
        self._answered_at: datetime | None = None  # the carrier bills from here
        self._end_task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._counted = False
        self._finished: CallRecord | None = None  # as the final write stored it
        self.ended = asyncio.Event()  # set as soon as an end is requested

    # ------------------------------------------------------------------ start

    def take(self) -> None:
        """This gateway serves the call from now on: it holds the gateway's lease."""
        self._rt.live.add(self)
        context = contextvars.copy_context()  # the writer's log lines carry the call id
        context.run(call_id_var.set, self.call.id)
        context.run(self._writes.start)
        store, gateway_id = self._rt.store, self._rt.live.gateway_id
        self.beside(lambda: store.set_served_by(self.call.id, gateway_id), "lease")
        events = self._rt.events
        if events is not None:
            self.beside(lambda: events.started(self.call), "call.started event")

    def beside(self, write: Callable[[], Awaitable[object]], what: str) -> None:
        """Store a fact of the call beside it rather than before the greeting: queued with
        the call's turns, in order (`write` is called afresh for each attempt); stored
        before the call's final write, or logged as unwritten."""
        self._writes.submit(what, write)

    def _storage_outage(self, reason: str) -> None:
        """The call's writes are given up: the agent says goodbye and the call ends."""
        log.error("the call ends: its writes cannot be stored (%s)", reason)
        self.end_politely(self._rt.outage_goodbye, STORAGE_UNAVAILABLE)

    def end_politely(self, goodbye: str, reason: str) -> None:
        """The gateway ends the call: the agent says `goodbye` (bounded) if the call is
        answered, then the call ends as failed with `reason` (at once if not answered)."""
        if self.session is not None and not self.ended.is_set():
            self.session.end_politely(goodbye, reason)
        else:
            self.request_end(reason, CallStatus.FAILED)

    async def answer(self) -> None:
        """The caller is there: plan, recorder, transport, session; the agent greets."""
        async with self._answering:
            if self.ended.is_set():
                return
            rt = self._rt
            self._answered_at = datetime.now(UTC)
            # Stored with the status: a sweeper costs the call from here if its gateway dies.
            self._progress(CallStatus.IN_PROGRESS, answered_at=self._answered_at)
            plan = await plan_call(self.call, assistants=rt.assistants, catalog=rt.catalog)
            gate = None
            if plan.voicemail is not None:
                # Twilio's verdict may reach another gateway: it is stored, and looked for.
                poll = self._stored_verdict if self.call.transport == "twilio" else None
                gate = VoicemailGate(plan.voicemail, bounds=rt.voicemail, poll=poll)
                self.callee_gate = gate
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
                writes=self._writes,
                config=rt.session_config,
                turn_plan=plan.turns,
                metrics=rt.metrics,
                on_end=self.request_end,
                on_turn=self._turn_event,
                screen=gate,
            )
            rt.metrics.calls_started_total += 1
            rt.metrics.calls_active += 1
            self._counted = True
            await self.session.start(greet=gate is None)
            if gate is not None:
                self._tasks.append(asyncio.create_task(self._screen(gate), name="voicemail"))
            self._tasks.append(
                asyncio.create_task(self._end_after(plan.max_duration_s), name="max-duration")
            )

    def _progress(self, status: CallStatus, *, answered_at: datetime | None = None) -> None:
        """Store a progress status (and when the call was answered) beside the call and, if
        it moved the call on, queue its `call.status` event right behind it."""
        store, events, moved = self._rt.store, self._rt.events, [False]

        async def write() -> None:
            moved[0] = await store.set_status(self.call.id, status, answered_at=answered_at)

        self.beside(write, "status")
        if events is not None:

            async def publish() -> None:
                if moved[0]:
                    await events.status(self.call, status)

            self.beside(publish, "call.status event")

    async def _stored_verdict(self) -> tuple[CalleeVerdict, bool] | None:
        """The carrier's verdict on who answered, if one is stored beside the call."""
        answered_by = await self._rt.store.carrier_answer(self.call.id)
        return verdict_of_answered_by(answered_by) if answered_by else None

    async def _screen(self, gate: VoicemailGate) -> None:
        """Act on the gate's outcome: greet a person, hang up on a machine, or leave the
        message once its greeting ended (the call then ends `voicemail`). Screening that
        fails goes on with what is known (`settle()`: undecided is greeted); acting on it
        that fails ends the call (`agent-error`): never a silent agent until max duration."""
        try:
            outcome = await gate.outcome()
        except Exception:
            log.exception("screening the callee failed: going on with what is known")
            outcome = gate.settle()
        session = self.session
        if session is None or self.ended.is_set():
            return
        log.info("callee screened", extra={"outcome": repr(outcome)})
        metrics = self._rt.metrics
        try:
            if isinstance(outcome, Greet):
                metrics.screened_greeted_total += 1
                session.greet()
            elif isinstance(outcome, HangUpOnMachine):
                metrics.screened_hung_up_total += 1
                self.request_end(VOICEMAIL, CallStatus.COMPLETED)
            else:
                metrics.screened_messages_left_total += 1
                session.leave_message(outcome.text)
        except Exception:
            log.exception("acting on the screening failed: the call ends")
            self.request_end("agent-error", CallStatus.FAILED)

    async def _turn_event(self, turn: TurnRecord, first_attempt: bool) -> None:
        if self._rt.events is not None:  # just stored here: on a first attempt, a new event
            await self._rt.events.turn(self.call, turn, fresh=first_attempt)

    async def _end_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.info("call reached its maximum duration", extra={"seconds": seconds})
        self.request_end("max-duration", CallStatus.COMPLETED)

    # ----------------------------------------------------------------- events

    @property
    def caller_quiet(self) -> bool:
        """True while the caller is quiet (no session yet, or `CallSession.caller_quiet`):
        a carrier hands over its audio in `QUIET_FRAME_MS` frames then, in 20 ms ones
        otherwise."""
        return self.session is None or self.session.caller_quiet

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
        self._ended_at = datetime.now(UTC)
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
        """Every step runs even if one before it failed (each failure is logged); the lease
        (the call's place in `LiveCalls`) is released only after the final write, and the
        final write does not wait for S3."""
        ending = self._ending
        assert ending is not None
        async with self._answering:  # an answer under way completes (or fails) first
            pass
        try:
            if self.session is not None:
                await _step("closing the session", self.session.close)
            if self._transport is not None:
                await _step("closing the transport", _sync(self._transport.close))
            await _step("stopping the call's tasks", self._stop_tasks)
            await _step("storing the call's writes", self._writes.drain)
            if self._recording is not None:  # stored as in progress: the report waits for it
                await _step("registering the recording", self._recording_started)
            if await _step("finishing the call", lambda: self._finish(ending)):
                log.info(
                    "call ended", extra={"reason": ending.reason, "status": str(ending.status)}
                )
                await _step("publishing the call's final status", self._final_status_event)
            else:  # this gateway's sweeper finishes it so once the database is back
                self._rt.live.left_unfinished(
                    self.call.id,
                    OwnEnding(ending.status, ending.reason, self._ended_at, self.usage()),
                )
                log.error(
                    "the call is not finished in the database", extra={"reason": ending.reason}
                )
            await _step("poking the outbox", _sync(lambda: self._rt.reports.poke(self.call.id)))
            if self._recording is not None:
                await _step("finishing the recording", self._finish_recording)
            await _step("closing the call's leg", lambda: self._leg.close(ending))
            await _step("stopping the call's writes", self._writes.aclose)
        finally:
            if self._counted:
                self._rt.metrics.calls_active -= 1
                self._counted = False
            self._rt.live.discard(self)
            self._done.set()

    async def _stop_tasks(self) -> None:
        """Cancel the pacer and the maximum duration, and wait for them to stop."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def usage(self) -> CallUsage:
        """What the call used: its session's counts, and the carrier from answered to ended
        (an unanswered call carried nothing)."""
        usage = self.session.usage if self.session is not None else CallUsage()
        carried = 0.0
        if self._answered_at is not None:
            carried = (self._ended_at - self._answered_at).total_seconds()
        return usage.with_carrier(self.call.transport, carried)

    async def _finish(self, ending: CallEnding) -> None:
        """The final write, retried within the write policy's bounds (one attempt once the
        call's writes were given up: the database is away)."""
        policy = self._rt.writes
        deadline = time.monotonic() + (0.0 if self._writes.given_up else policy.outage_s)
        delays = policy.retry_delays()
        usage = self.usage()
        cost = price_call(usage, self._rt.prices, call_id=self.call.id)
        while True:
            try:
                # Longer than a turn's bound: it reads the call's turns for its latencies.
                # Nothing is read back after the write: a failed read would look like a
                # call left unfinished.
                async with asyncio.timeout(policy.attempt_timeout_s * 3):
                    self._finished = await self._rt.store.finish_call(
                        self.call.id,
                        status=ending.status,
                        end_reason=ending.reason,
                        ended_at=self._ended_at,
                        usage=usage,
                        cost=cost,
                    )
                return
            except (StorageError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("finishing the call failed, retrying: %r", exc)
                await asyncio.sleep(next(delays))

    async def _final_status_event(self) -> None:
        """`call.status` with the status the call was finished with (bounded: the caller
        is gone, but the end should not hang on a database that went away). It only speeds
        it up: the report round (any gateway's outbox) publishes it before `call.ended`."""
        if self._rt.events is None or self._finished is None:
            return
        async with asyncio.timeout(self._rt.writes.attempt_timeout_s * 3):
            await self._rt.events.status(self.call, self._finished.status)

    async def _recording_started(self) -> None:
        assert self._recording is not None
        try:
            async with asyncio.timeout(self._rt.recording_finish_timeout_s):
                await self._recording.started()
        except TimeoutError:
            log.warning("the recording had not started when the call ended")

    async def _finish_recording(self) -> None:
        """Complete the recording, bounded: past the bound its upload is left open for the
        outbox to salvage (the stored call says `recording`, so its report waits for it)."""
        assert self._recording is not None
        timeout_s = self._rt.recording_finish_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                state = await self._recording.finish()
        except TimeoutError:
            log.warning(
                "the recording did not finish in time: left to salvage",
                extra={"timeout_s": timeout_s},
            )
            return
        # A LiveKit egress completes later: its egress_ended webhook publishes it.
        if self._rt.events is not None and isinstance(state, RecordingState):
            async with asyncio.timeout(self._rt.writes.attempt_timeout_s * 3):
                await self._rt.events.recording_ready(self.call, state)


async def _step(what: str, step: Callable[[], Awaitable[object]]) -> bool:
    """Run one step of a call's end; a failure is logged and the next step runs (True: done)."""
    try:
        await step()
    except Exception:  # one step of the end: logged with the call id, the end goes on
        log.exception("%s failed", what)
        return False
    return True


def _sync(action: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    """A synchronous step, as `_step` runs it."""

    async def run() -> object:
        return action()

    return run
