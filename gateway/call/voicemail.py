"""Who answered an outbound call, and what the agent does about it: the voicemail gate.

An outbound call whose assistant has a `voicemail` plan is screened before the agent says
anything: the gate holds the greeting until a verdict (`CalleeVerdict`) comes from a
carrier-specific source (Twilio's answering-machine detection through `/twilio/amd`, or a
detector listening to the callee on LiveKit), bounded by `VoicemailBounds.decision_timeout_s`
(no verdict by then is `unknown`, treated as a person). A person (or `unknown`) is greeted
at once. A machine is hung up on (action `hangup`, or a fax), or (action `leave_message`)
its greeting is waited out until `machine_done` (the beep; bounded by
`message_end_timeout_s`), then the message is said and the call ends, end reason
`voicemail`.

While the gate is undecided, the callee's audio frames and transcripts go to the
`CalleeListener`s added to it (a detector), and after `machine` until the greeting ended
(the detector hears the beep); once it has decided they cost nothing.

Order of calls: `verdict()` any number of times from any source (the first decision is
kept; only `machine_done` after `machine` moves it on); `on_audio()` / `on_transcript()`
while `undecided`; `outcome()` once, by the call's lifecycle, which acts on it (or, if it
raised, `settle()`: what to do with what is known).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from audio.frames import AudioFrame
from storage import StorageError, VoicemailPlan

log = logging.getLogger(__name__)

VOICEMAIL = "voicemail"  # the end reason of a call that reached a machine


class CalleeVerdict(enum.StrEnum):
    """Who answered an outbound call, as far as a detector can tell."""

    HUMAN = "human"
    MACHINE = "machine"  # a machine answered; its greeting plays
    MACHINE_DONE = "machine_done"  # its greeting ended (the beep): a message can be left
    UNKNOWN = "unknown"  # no decision within the bound: treated as a person


# Carriers' answering-machine words (Twilio's `AnsweredBy`) as verdicts; a fax takes no
# message (see `verdict_of_answered_by`).
_ANSWERED_BY = {
    "human": CalleeVerdict.HUMAN,
    "machine_start": CalleeVerdict.MACHINE,
    "machine_end_beep": CalleeVerdict.MACHINE_DONE,
    "machine_end_silence": CalleeVerdict.MACHINE_DONE,
    "machine_end_other": CalleeVerdict.MACHINE_DONE,
    "fax": CalleeVerdict.MACHINE,
    "unknown": CalleeVerdict.UNKNOWN,
}


def verdict_of_answered_by(answered_by: str) -> tuple[CalleeVerdict, bool] | None:
    """The verdict of a carrier's `AnsweredBy` value, and whether a message may be left
    (False for a fax); None for a value it does not know."""
    verdict = _ANSWERED_BY.get(answered_by)
    return None if verdict is None else (verdict, answered_by != "fax")


class CalleeListener(Protocol):
    """Hears the callee while the gate is undecided, and a machine until its greeting ended
    (e.g. a machine detector, whose `machine_done` is the beep)."""

    def on_audio(self, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
        """One frame of the callee's audio at `sample_rate`."""
        ...

    def on_transcript(self, text: str, final: bool) -> None:
        """What the session's STT heard of the callee (interim or final)."""
        ...


@dataclass(frozen=True, slots=True)
class VoicemailBounds:
    """How long a call may be screened (settings VOICEMAIL_*)."""

    # No verdict by then: `unknown`, the agent greets.
    decision_timeout_s: float = 35.0
    # A machine's greeting that has not ended by then: the message is said anyway.
    message_end_timeout_s: float = 45.0
    # How often a verdict stored beside the call (another gateway took the carrier's
    # callback, or it came before the stream started here) is looked for: at once, then
    # every `poll_interval_s` (one `_id` read each; 1 s: a verdict taken by another gateway
    # is acted on within about a second). A verdict taken here wakes the gate at once.
    poll_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Greet:
    """A person (or nobody could tell): the agent greets."""


@dataclass(frozen=True, slots=True)
class HangUpOnMachine:
    """A machine answered and no message is left."""


@dataclass(frozen=True, slots=True)
class LeaveMessage:
    """A machine's greeting ended: say `text`, then hang up."""

    text: str


GateOutcome = Greet | HangUpOnMachine | LeaveMessage

# Looks for a verdict stored elsewhere (another gateway took the carrier's callback).
VerdictPoll = Callable[[], Awaitable[tuple[CalleeVerdict, bool] | None]]


class VoicemailGate:
    """Screens one outbound call whose assistant has a voicemail `plan` (message filled)."""

    def __init__(
        self,
        plan: VoicemailPlan,
        *,
        bounds: VoicemailBounds | None = None,
        poll: VerdictPoll | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self._bounds = bounds or VoicemailBounds()
        self._poll = poll
        self._clock = clock
        self._started_at = clock()
        self._listeners: list[CalleeListener] = []
        self._decision: CalleeVerdict | None = None  # human, machine or unknown
        self._takes_message = True  # False: a fax
        self._decided = asyncio.Event()
        self._done = asyncio.Event()  # the machine's greeting ended

    @property
    def undecided(self) -> bool:
        return self._decision is None

    @property
    def decision(self) -> CalleeVerdict | None:
        """human, machine or unknown (None while undecided)."""
        return self._decision

    @property
    def screening(self) -> bool:
        """True while what the callee says is no conversation: undecided, or a machine."""
        return self._decision is None or self._decision is CalleeVerdict.MACHINE

    def add_listener(self, listener: CalleeListener) -> None:
        self._listeners.append(listener)

    def verdict(
        self, verdict: CalleeVerdict, at_ms: float | None = None, *, takes_message: bool = True
    ) -> None:
        """A source's verdict (`at_ms`: when in the call it was reached, for the log). The
        first decision is kept; `machine_done` decides `machine` too if it comes first.
        `takes_message=False` (a fax): hang up whatever the plan says."""
        after_s = round(self._clock() - self._started_at, 3)
        extra = {"verdict": verdict.value, "at_ms": at_ms, "after_s": after_s}
        done = verdict is CalleeVerdict.MACHINE_DONE
        if self._decision is None:
            self._decision = CalleeVerdict.MACHINE if done else verdict
            self._takes_message = takes_message
            self._decided.set()
            log.info("callee verdict", extra=extra)
        elif not (done and self._decision is CalleeVerdict.MACHINE):
            log.debug("later callee verdict ignored", extra=extra)
            return
        if done and not self._done.is_set():
            self._done.set()
            log.info("the machine's greeting ended", extra=extra)

    def on_audio(self, frame: AudioFrame) -> None:
        """A frame of the callee's audio: heard by the listeners while undecided, and after
        `machine` until its greeting ended (a detector's `machine_done` is its beep)."""
        if self._listened():
            for listener in self._listeners:
                listener.on_audio(frame.pcm, frame.rate)

    def on_transcript(self, text: str, final: bool) -> None:
        """The callee's words: heard by the listeners as its audio is."""
        if self._listened():
            for listener in self._listeners:
                listener.on_transcript(text, final)

    def _listened(self) -> bool:
        if self._decision is None:
            return True
        return self._decision is CalleeVerdict.MACHINE and not self._done.is_set()

    async def outcome(self) -> GateOutcome:
        """Wait for the decision (bounded), and for a machine's greeting to end when a
        message is to be left (bounded); what the agent does then."""
        await self._wait(self._decided, self._bounds.decision_timeout_s, self._undecided)
        if self._decision is None:
            log.info("no callee verdict in time: treated as a person")
        elif self._decision is CalleeVerdict.MACHINE and self._leaves_message():
            await self._wait(self._done, self._bounds.message_end_timeout_s, self._greeting_on)
            if not self._done.is_set():
                log.info("the machine's greeting did not end in time: the message is left now")
        return self.settle()

    def settle(self) -> GateOutcome:
        """What the agent does now, with what is known (the end of `outcome()`, or screening
        cut short by an error): undecided is decided `unknown` and greeted, so the callee's
        words reach the agent; a machine is hung up on, or its message left at once."""
        if self._decision is None:
            self.verdict(CalleeVerdict.UNKNOWN)
        if self._decision is not CalleeVerdict.MACHINE:
            return Greet()
        if not self._leaves_message():
            return HangUpOnMachine()
        return LeaveMessage(self.plan.message)

    def _leaves_message(self) -> bool:
        return self.plan.action == "leave_message" and self._takes_message

    def _undecided(self) -> bool:
        return self._decision is None

    def _greeting_on(self) -> bool:
        return not self._done.is_set()

    async def _wait(
        self, event: asyncio.Event, timeout_s: float, waiting: Callable[[], bool]
    ) -> None:
        """Wait for `event` within `timeout_s`, looking for a stored verdict meanwhile."""
        deadline = self._clock() + timeout_s
        while waiting():
            if self._poll is not None:
                found = await self._polled(self._poll)
                if found is not None:
                    self.verdict(found[0], takes_message=found[1])
                if not waiting():
                    return
            left = deadline - self._clock()
            if left <= 0:
                return
            step = left if self._poll is None else min(left, self._bounds.poll_interval_s)
            try:
                async with asyncio.timeout(step):
                    await event.wait()
            except TimeoutError:
                pass

    async def _polled(self, poll: VerdictPoll) -> tuple[CalleeVerdict, bool] | None:
        try:
            async with asyncio.timeout(max(1.0, self._bounds.poll_interval_s * 4)):
                return await poll()
        except (StorageError, TimeoutError) as exc:  # looked for again at the next interval
            log.warning("looking for a stored callee verdict failed: %r", exc)
        except Exception:  # not expected: logged whole, and looked for again all the same
            log.exception("looking for a stored callee verdict failed")
        return None
