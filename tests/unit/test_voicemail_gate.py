"""The voicemail gate: verdicts to outcomes, its bounds, the stored-verdict poll and the
callee listener hook (no carrier; the Twilio path is tests/integration/test_twilio_voicemail.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from audio.frames import AudioFrame
from gateway.call.voicemail import (
    CalleeVerdict,
    Greet,
    HangUpOnMachine,
    LeaveMessage,
    VoicemailBounds,
    VoicemailGate,
    verdict_of_answered_by,
)
from gateway.settings import AMD_VERDICT_MARGIN_S, Settings
from storage import AssistantConfig, StorageError, VoicemailPlan

LEAVE = VoicemailPlan(action="leave_message", message="Hi Dana, call us back.")
HANG_UP = VoicemailPlan(action="hangup")
QUICK = VoicemailBounds(decision_timeout_s=0.2, message_end_timeout_s=0.2, poll_interval_s=0.01)
SLOW = VoicemailBounds(decision_timeout_s=30, message_end_timeout_s=30, poll_interval_s=0.01)


class Ears:
    """A listener that keeps what it heard."""

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.words: list[tuple[str, bool]] = []

    def on_audio(self, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
        self.frames.append(sample_rate)

    def on_transcript(self, text: str, final: bool) -> None:
        self.words.append((text, final))


def test_answered_by_maps_to_verdicts() -> None:
    assert verdict_of_answered_by("human") == (CalleeVerdict.HUMAN, True)
    assert verdict_of_answered_by("machine_start") == (CalleeVerdict.MACHINE, True)
    for end in ("machine_end_beep", "machine_end_silence", "machine_end_other"):
        assert verdict_of_answered_by(end) == (CalleeVerdict.MACHINE_DONE, True)
    assert verdict_of_answered_by("fax") == (CalleeVerdict.MACHINE, False)
    assert verdict_of_answered_by("unknown") == (CalleeVerdict.UNKNOWN, True)
    assert verdict_of_answered_by("robot") is None


def test_leave_message_needs_a_message() -> None:
    with pytest.raises(ValidationError, match="needs a message"):
        VoicemailPlan(action="leave_message", message="  ")
    assert VoicemailPlan(action="hangup").message == ""
    config = AssistantConfig(name="a", system_prompt="p", voicemail=LEAVE)
    assert config.voicemail == LEAVE
    with pytest.raises(ValidationError):
        VoicemailPlan(action="leave_message", message="x" * 1001)


async def test_a_person_is_greeted_at_once() -> None:
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    waiting = asyncio.create_task(gate.outcome())
    await asyncio.sleep(0)
    assert gate.undecided and gate.screening
    gate.verdict(CalleeVerdict.HUMAN, 900.0)
    assert await asyncio.wait_for(waiting, 5) == Greet()
    assert not gate.screening
    gate.verdict(CalleeVerdict.MACHINE)  # later verdicts change nothing
    assert gate.decision is CalleeVerdict.HUMAN


async def test_no_verdict_in_time_is_unknown_and_greeted() -> None:
    gate = VoicemailGate(LEAVE, bounds=QUICK)
    assert await asyncio.wait_for(gate.outcome(), 5) == Greet()
    assert gate.decision is CalleeVerdict.UNKNOWN


async def test_machine_with_hangup_ends_without_waiting_for_the_beep() -> None:
    gate = VoicemailGate(HANG_UP, bounds=SLOW)
    gate.verdict(CalleeVerdict.MACHINE)
    assert await asyncio.wait_for(gate.outcome(), 5) == HangUpOnMachine()


async def test_machine_message_waits_for_the_end_of_the_greeting() -> None:
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    waiting = asyncio.create_task(gate.outcome())
    gate.verdict(CalleeVerdict.MACHINE)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done() and gate.screening
    gate.verdict(CalleeVerdict.MACHINE_DONE)
    assert await asyncio.wait_for(waiting, 5) == LeaveMessage("Hi Dana, call us back.")


async def test_message_end_alone_decides_a_machine() -> None:
    """Twilio's DetectMessageEnd sends only machine_end_*: decided and done at once."""
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    gate.verdict(CalleeVerdict.MACHINE_DONE)
    assert gate.decision is CalleeVerdict.MACHINE
    assert await asyncio.wait_for(gate.outcome(), 5) == LeaveMessage(LEAVE.message)


async def test_a_greeting_that_never_ends_gets_the_message_after_the_bound() -> None:
    gate = VoicemailGate(LEAVE, bounds=QUICK)
    gate.verdict(CalleeVerdict.MACHINE)
    assert await asyncio.wait_for(gate.outcome(), 5) == LeaveMessage(LEAVE.message)


async def test_a_fax_is_hung_up_on_whatever_the_plan() -> None:
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    gate.verdict(CalleeVerdict.MACHINE, takes_message=False)
    assert await asyncio.wait_for(gate.outcome(), 5) == HangUpOnMachine()


async def test_a_stored_verdict_is_polled_until_found() -> None:
    """Another gateway took the carrier's callback: the verdict is read from the store."""
    answers: list[tuple[CalleeVerdict, bool] | None] = [None, None]
    polls = 0

    async def poll() -> tuple[CalleeVerdict, bool] | None:
        nonlocal polls
        polls += 1
        if polls == 2:
            raise StorageError("the database blinked")  # looked for again
        return answers.pop(0) if answers else (CalleeVerdict.MACHINE_DONE, True)

    gate = VoicemailGate(LEAVE, bounds=SLOW, poll=poll)
    assert await asyncio.wait_for(gate.outcome(), 5) == LeaveMessage(LEAVE.message)
    assert polls >= 3


async def test_the_poll_keeps_looking_for_the_end_of_the_greeting() -> None:
    seen = [(CalleeVerdict.MACHINE, True)] * 3

    async def poll() -> tuple[CalleeVerdict, bool] | None:
        return seen.pop(0) if seen else (CalleeVerdict.MACHINE_DONE, True)

    gate = VoicemailGate(LEAVE, bounds=SLOW, poll=poll)
    assert await asyncio.wait_for(gate.outcome(), 5) == LeaveMessage(LEAVE.message)
    assert not seen


async def test_listeners_hear_the_callee_while_undecided_and_a_machine_until_it_is_done() -> None:
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    ears = Ears()
    gate.add_listener(ears)
    frame = AudioFrame(np.zeros(160, dtype=np.int16), 8000)
    gate.on_audio(frame)
    gate.on_transcript("hi you've reached", False)
    gate.verdict(CalleeVerdict.MACHINE)
    gate.on_audio(frame)  # a detector listens for the beep
    gate.on_transcript("Sam", True)
    gate.verdict(CalleeVerdict.MACHINE_DONE)
    gate.on_audio(frame)
    gate.on_transcript("beep", True)
    assert ears.frames == [8000, 8000]
    assert ears.words == [("hi you've reached", False), ("Sam", True)]


async def test_listeners_hear_nothing_once_a_person_is_decided() -> None:
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    ears = Ears()
    gate.add_listener(ears)
    gate.verdict(CalleeVerdict.HUMAN)
    gate.on_audio(AudioFrame(np.zeros(160, dtype=np.int16), 8000))
    gate.on_transcript("hello", True)
    assert ears.frames == [] and ears.words == []


async def test_an_unexpected_poll_error_is_logged_and_looked_for_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    polls = 0

    async def poll() -> tuple[CalleeVerdict, bool] | None:
        nonlocal polls
        polls += 1
        if polls == 1:
            raise RuntimeError("a bug, not the database")
        return (CalleeVerdict.HUMAN, True)

    gate = VoicemailGate(LEAVE, bounds=SLOW, poll=poll)
    assert await asyncio.wait_for(gate.outcome(), 5) == Greet()
    assert polls == 2
    [failed] = [r for r in caplog.records if "stored callee verdict failed" in r.message]
    assert failed.exc_info is not None  # with its traceback


async def test_the_poll_reads_once_an_interval_while_nothing_is_stored() -> None:
    """One `_id` read at once, then one per interval (a loaded machine only reads less);
    by default once a second, not four times."""
    polls = 0

    async def poll() -> tuple[CalleeVerdict, bool] | None:
        nonlocal polls
        polls += 1
        return None

    bounds = VoicemailBounds(decision_timeout_s=1.0, poll_interval_s=0.2)
    gate = VoicemailGate(LEAVE, bounds=bounds, poll=poll)
    assert await asyncio.wait_for(gate.outcome(), 30) == Greet()
    assert 1 <= polls <= 7
    assert VoicemailBounds().poll_interval_s == 1.0


def test_settle_acts_on_what_is_known() -> None:
    """Screening cut short (an error): undecided is `unknown` and greeted (the callee's
    words reach the agent again); a machine is hung up on or gets its message at once."""
    gate = VoicemailGate(LEAVE, bounds=SLOW)
    assert gate.settle() == Greet()
    assert gate.decision is CalleeVerdict.UNKNOWN and not gate.screening
    machine = VoicemailGate(LEAVE, bounds=SLOW)
    machine.verdict(CalleeVerdict.MACHINE)
    assert machine.settle() == LeaveMessage(LEAVE.message)
    fax = VoicemailGate(LEAVE, bounds=SLOW)
    fax.verdict(CalleeVerdict.MACHINE, takes_message=False)
    assert fax.settle() == HangUpOnMachine()
    hang_up = VoicemailGate(HANG_UP, bounds=SLOW)
    hang_up.verdict(CalleeVerdict.MACHINE)
    assert hang_up.settle() == HangUpOnMachine()


def test_the_decision_outlasts_the_detectors() -> None:
    """A gate that gave up before Twilio's verdict was due would greet a machine."""
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    assert base.voicemail_decision_timeout_s >= base.twilio_amd_timeout_s + AMD_VERDICT_MARGIN_S
    with pytest.raises(ValidationError, match="TWILIO_AMD_TIMEOUT_S"):
        Settings(_env_file=None, twilio_amd_timeout_s=40)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="TWILIO_AMD_TIMEOUT_S"):
        Settings(_env_file=None, voicemail_decision_timeout_s=32)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="LIVEKIT_MACHINE_DETECTION_S"):
        Settings(_env_file=None, livekit_machine_detection_s=40)  # type: ignore[call-arg]
    longer = Settings(
        _env_file=None,  # type: ignore[call-arg]
        twilio_amd_timeout_s=50,
        voicemail_decision_timeout_s=53,
    )
    assert longer.voicemail_decision_timeout_s == 53
