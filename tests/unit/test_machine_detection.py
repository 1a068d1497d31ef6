"""The machine detector's rules on frames already classified (exact times), and on speech
(espeak-ng through a mu-law round trip): a short answer then silence is a person at once,
a long greeting or machine words are a machine, a beep ends the greeting, nothing in time
is unknown; a decided detector ignores what it is fed. `GateDetector` hands decisions to
the call's gate and keeps the bound when no frames come."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from audio.beep import Beep
from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import AudioFrame
from gateway.call.machine_detection import (
    Detection,
    DetectionConfig,
    GateDetector,
    MachineDetector,
    machine_words,
)
from gateway.call.voicemail import CalleeVerdict, VoicemailGate
from storage import VoicemailPlan
from tests.espeak import needs_espeak, speak

FRAME_MS = 20.0


def _feed(
    detector: MachineDetector, pattern: str, *, start_ms: float = 0.0, beep_at: int | None = None
) -> list[Detection]:
    """One frame per character: `s` speech, `.` silence, `t` part of a tone; a beep ending
    at frame `beep_at` (index in `pattern`)."""
    out: list[Detection] = []
    for i, c in enumerate(pattern):
        at = start_ms + i * FRAME_MS
        beeps = [Beep(at - 400.0, at, 1000.0)] if beep_at == i else None
        out += detector.observe(at, FRAME_MS, speech=c == "s", toning=c == "t", beeps=beeps)
    return out


def test_a_short_answer_then_silence_is_a_person_after_the_silence() -> None:
    detector = MachineDetector(DetectionConfig(human_silence_ms=800.0))
    # 300 ms of line, a 600 ms "Hello?", then silence.
    [decision] = _feed(detector, "." * 15 + "s" * 30 + "." * 60)
    assert decision.verdict == "human" and decision.reason == "short-greeting"
    assert decision.at_ms == pytest.approx(900.0 + 800.0)
    assert detector.decided and _feed(detector, "s" * 200, start_ms=3000.0) == []


def test_speech_that_runs_past_the_greeting_bound_is_a_machine_then_done_on_silence() -> None:
    config = DetectionConfig(machine_greeting_ms=2400.0, greeting_end_silence_ms=1500.0)
    detector = MachineDetector(config)
    # Sentences with pauses shorter than the person's silence: one greeting.
    greeting = ("s" * 40 + "." * 20) * 3 + "s" * 40
    out = _feed(detector, "." * 10 + greeting + "." * 100)
    assert [d.verdict for d in out] == ["machine", "machine_done"]
    assert out[0].reason == "long-greeting" and out[0].at_ms == pytest.approx(200.0 + 2420.0)
    greeting_end = 200.0 + len(greeting) * FRAME_MS
    assert out[1].reason == "silence" and out[1].at_ms == pytest.approx(greeting_end + 1500.0)


def test_a_beep_is_a_machine_whose_greeting_ended_at_the_tone() -> None:
    detector = MachineDetector()
    out = _feed(detector, "s" * 50 + "." * 20 + "t" * 20 + ".", beep_at=90)
    assert [(d.verdict, d.reason) for d in out] == [("machine", "beep"), ("machine_done", "beep")]
    assert out[1].at_ms == 1800.0


def test_a_beep_after_a_machine_verdict_ends_the_greeting_before_the_silence_would() -> None:
    detector = MachineDetector(DetectionConfig(machine_greeting_ms=1000.0))
    out = _feed(detector, "s" * 60 + "." * 10 + "t" * 20 + "." * 5, beep_at=90)
    assert [(d.verdict, d.reason) for d in out] == [
        ("machine", "long-greeting"),
        ("machine_done", "beep"),
    ]


def test_a_tone_under_way_is_neither_speech_nor_the_silence_that_ends_a_greeting() -> None:
    detector = MachineDetector(DetectionConfig(greeting_end_silence_ms=500.0))
    detector.observe(0.0, FRAME_MS, speech=False)
    detector.on_transcript("please leave a message", final=True)
    assert detector.verdict == "machine"
    # A 2 s tone (to an energy VAD: loud speech) with no beep reported yet: no decision.
    assert _feed(detector, "t" * 100, start_ms=20.0) == []


def test_machine_words_decide_a_short_greeting() -> None:
    detector = MachineDetector(DetectionConfig(transcript_wait_ms=700.0))
    assert _feed(detector, "s" * 50 + "." * 45) == []  # silence, but its words are due
    [decision] = detector.on_transcript("hi you've reached sam", final=True)
    assert decision.verdict == "machine" and decision.detail == "you've reached"


def test_with_transcripts_expected_a_person_is_decided_when_their_words_come() -> None:
    detector = MachineDetector(DetectionConfig(transcript_wait_ms=700.0))
    assert _feed(detector, "s" * 30 + "." * 45) == []  # 900 ms of silence, words due
    [decision] = detector.on_transcript("hello", final=True)
    assert decision.verdict == "human" and decision.at_ms == 1500.0


def test_with_transcripts_expected_words_that_never_come_delay_a_person_boundedly() -> None:
    detector = MachineDetector(DetectionConfig(human_silence_ms=800.0, transcript_wait_ms=700.0))
    [decision] = _feed(detector, "s" * 30 + "." * 100)
    assert decision.verdict == "human" and decision.at_ms == pytest.approx(600.0 + 1500.0)


def test_judged_by_words_a_long_greeting_without_machine_words_is_a_person() -> None:
    config = DetectionConfig(words_greeting_ms=5000.0, long_words_wait_ms=1000.0)
    detector = MachineDetector(config)
    # "Good afternoon, Acme Dental, this is Sam, how can I help you?": 3 s, then waits.
    assert _feed(detector, "s" * 150 + "." * 45) == []  # past 2.4 s: no verdict yet
    [decision] = detector.on_transcript("good afternoon acme dental how can i help you", final=True)
    assert decision.verdict == "human" and decision.at_ms == pytest.approx(3000.0 + 900.0)


def test_judged_by_words_machine_words_or_a_greeting_too_long_are_a_machine() -> None:
    config = DetectionConfig(words_greeting_ms=5000.0)
    worded = MachineDetector(config)
    _feed(worded, "s" * 150)
    [decision] = worded.on_transcript("sorry i missed your call leave a message", final=False)
    assert (decision.verdict, decision.reason) == ("machine", "words")
    endless = MachineDetector(config)
    [decision] = _feed(endless, "s" * 260)
    assert (decision.verdict, decision.reason) == ("machine", "long-greeting")
    assert decision.at_ms == pytest.approx(5000.0)


def test_nothing_said_in_time_is_unknown_also_on_a_line_with_no_frames() -> None:
    detector = MachineDetector(DetectionConfig(max_decision_ms=3000.0))
    assert _feed(detector, "." * 50) == []
    assert detector.tick(2999.0) == []
    [decision] = detector.tick(3000.0)
    assert (decision.verdict, decision.reason) == ("unknown", "timeout")


def test_a_click_is_not_a_greeting() -> None:
    detector = MachineDetector(DetectionConfig(max_decision_ms=2000.0))
    [decision] = _feed(detector, "." * 10 + "ss" + "." * 100)
    assert decision.verdict == "unknown"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Please leave a message after the tone", "leave a message"),
        ("sam is not available right now", "is not available"),
        ("I CAN'T TAKE YOUR CALL", "can't take your call"),
        ("you have reached the voice mail of", "you have reached"),
        ("hello who is this", None),
        ("yeah this is sam speaking", None),
    ],
)
def test_machine_words(text: str, phrase: str | None) -> None:
    assert machine_words(text) == phrase


def _mulaw_call(*parts: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    pcm = np.concatenate(parts)
    rng = np.random.default_rng(3)
    line = (rng.standard_normal(pcm.size) * 32768 * 10 ** (-60 / 20)).astype(np.int32)
    return ulaw_decode(ulaw_encode((pcm.astype(np.int32) + line).clip(-32768, 32767)))


def _listen(detector: MachineDetector, pcm: npt.NDArray[np.int16], rate: int) -> None:
    frame = rate // 50
    for start in range(0, pcm.size - frame + 1, frame):
        detector.on_audio(pcm[start : start + frame], rate)


@needs_espeak
def test_hello_on_the_phone_is_a_person_soon_after_the_word() -> None:
    hello = speak("Hello?", 8000)
    pcm = _mulaw_call(np.zeros(3200, np.int16), hello, np.zeros(24000, np.int16))
    detector = MachineDetector()
    _listen(detector, pcm, 8000)
    [decision] = detector.decisions
    assert decision.verdict == "human"
    assert decision.at_ms < 1000.0 * (3200 + hello.size) / 8000 + 1000.0


@needs_espeak
def test_a_machine_greeting_and_its_beep_on_the_phone() -> None:
    greeting = speak(
        "Hi, you have reached Sam. I cannot take your call right now. "
        "Please leave a message after the tone.",
        8000,
    )
    t = np.arange(3200) / 8000
    beep = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    silence = np.zeros(4000, np.int16)
    pcm = _mulaw_call(silence, greeting, silence, beep, np.zeros(16000, np.int16))
    detector = MachineDetector()
    _listen(detector, pcm, 8000)
    assert [d.verdict for d in detector.decisions] == ["machine", "machine_done"]
    beep_end_ms = 1000.0 * (2 * silence.size + greeting.size + beep.size) / 8000
    assert detector.decisions[1].reason == "beep"
    assert abs(detector.decisions[1].at_ms - beep_end_ms) <= 40.0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_gate_detector_hands_its_decisions_to_the_gate() -> None:
    gate = VoicemailGate(VoicemailPlan(action="leave_message", message="Call us back."))
    detector = GateDetector(gate, DetectionConfig(machine_greeting_ms=1000.0))
    gate.add_listener(detector)
    rng = np.random.default_rng(1)
    quiet = np.zeros(160, dtype=np.int16)
    for _ in range(10):
        gate.on_audio(AudioFrame(quiet, 8000))
    for _ in range(60):  # loud noise: speech to an energy VAD, and no tone
        gate.on_audio(AudioFrame((rng.standard_normal(160) * 3000).astype(np.int16), 8000))
    assert gate.decision is CalleeVerdict.MACHINE
    gate.on_transcript("please leave a message", True)  # decided already: no second verdict
    assert [d.verdict for d in detector.detector.decisions] == ["machine"]


async def test_a_gate_detector_keeps_time_when_no_frames_come() -> None:
    gate = VoicemailGate(VoicemailPlan(action="hangup"))
    clock = _Clock()
    detector = GateDetector(gate, DetectionConfig(max_decision_ms=1500.0), clock=clock)
    ticking = asyncio.create_task(detector.keep_time(interval_s=0.001))
    try:
        while not detector.detector.decided:
            clock.now += 0.1
            await asyncio.sleep(0.002)
    finally:
        await asyncio.wait_for(ticking, 5)
    assert gate.decision is CalleeVerdict.UNKNOWN
    [decision] = detector.detector.decisions
    assert decision.reason == "timeout" and decision.at_ms >= 1500.0
