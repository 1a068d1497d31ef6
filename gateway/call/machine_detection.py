"""Answering-machine detection from the callee's first seconds, for carriers that do not
detect machines themselves (LiveKit SIP): is it a person, a machine whose greeting plays, or
a machine whose greeting is over (a message can be left now)? Pure and synchronous: the
time is the callee's audio timeline (samples fed), so tests and the bench run at any speed.

Three kinds of evidence, as a person and a machine differ on a phone:
- the greeting's length: a person answers with a short "Hello?" or "Hi, this is Sam" and
  waits; a machine talks for several seconds without yielding;
- its words, from the call's STT ("leave a message", "not available", "after the tone"...);
- a beep: a steady tone (`audio.beep`) is a machine about to record.

Rules, in the order they can fire (all times from the first frame fed):
- a beep: `machine` (if undecided) then `machine_done` at the tone's end;
- machine words in any transcript while undecided: `machine`;
- speech running `machine_greeting_ms` from its start without a pause of `human_silence_ms`:
  `machine`;
- a greeting shorter than that, followed by `human_silence_ms` of silence: `human` at once
  (when transcripts are expected, `transcript_wait_ms` more at most for the utterance's
  words, so that a short "You've reached Sam." is not taken for a person); with
  `words_greeting_ms` set, longer greetings up to that are judged by their words too;
- nothing decided by `max_decision_ms`: `unknown` (the caller treats it as a person);
- once `machine`: `machine_done` at a beep, or after `greeting_end_silence_ms` of silence.
A `human` or `unknown` verdict is final; the detector then ignores what it is fed.

`GateDetector` runs one for a call's `VoicemailGate` (as its `CalleeListener`) and hands
the decisions to the gate.

Order of calls: `on_audio()` for every frame of the callee in order (or `observe()` with
frames already classified), `on_transcript()` whenever the STT hands a transcript, and
`tick()` when time passes with no frame; each returns the decisions it made (usually none).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from audio.beep import Beep, BeepDetector
from audio.vad import EnergyVAD, FrameClassifier
from gateway.call.voicemail import CalleeVerdict, VoicemailGate

log = logging.getLogger(__name__)

Reason = Literal["beep", "words", "long-greeting", "short-greeting", "silence", "timeout"]

# Phrases of answering-machine and voicemail greetings (lower case, words as STT spells them).
MACHINE_PHRASES = (
    r"leave (a|your|me a|us a) (message|name|brief message|short message)",
    r"leave your (name|number)",
    r"(not|isn't|is not|aren't|are not) available",
    r"unavailable",
    r"after the (tone|beep)",
    r"at the (tone|beep)",
    r"voice ?mail",
    r"mailbox",
    r"(can't|cannot|can not|unable to) (take|answer|come to|get to) (your|the) (call|phone)",
    r"you('ve| have)? reached",
    r"(get|call) (back to you|you back)",
    r"record (your|a) message",
    r"please record",
    r"the (person|number|party) you (are|have) (calling|called|trying)",
)
_FINAL = (CalleeVerdict.HUMAN, CalleeVerdict.UNKNOWN, CalleeVerdict.MACHINE_DONE)
_MACHINE_WORDS = re.compile(r"\b(" + "|".join(MACHINE_PHRASES) + r")\b")


def machine_words(text: str) -> str | None:
    """The first answering-machine phrase in `text`, if any."""
    found = _MACHINE_WORDS.search(" ".join(text.lower().replace("\u2019", "'").split()))
    return found.group(0) if found is not None else None


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    """The detector's bounds, in milliseconds of the callee's audio."""

    max_decision_ms: float = 6000.0
    machine_greeting_ms: float = 2400.0
    human_silence_ms: float = 800.0
    transcript_wait_ms: float = 0.0
    greeting_end_silence_ms: float = 1500.0
    min_speech_ms: float = 100.0
    # With transcripts: greetings from `machine_greeting_ms` up to this are judged by their
    # words (machine words: a machine; none, once they came or `long_words_wait_ms` after
    # the silence: a person, e.g. a business answering "Good afternoon, Acme Dental, this
    # is Sam, how can I help you?"); longer ones are a machine. None: length alone.
    words_greeting_ms: float | None = None
    long_words_wait_ms: float = 1000.0


@dataclass(frozen=True, slots=True)
class Detection:
    """A decision: `verdict` at `at_ms` (audio time), and why."""

    verdict: CalleeVerdict
    at_ms: float
    reason: Reason
    detail: str = ""


class MachineDetector:
    """Decides whether a person or a machine answered one call (see the module docstring).

    `vad` classifies frames as speech (the call's Silero stream may be passed); unless it is
    given, an `EnergyVAD` is made at the first frame, as a `BeepDetector` is, at the audio's
    rate.
    """

    def __init__(
        self, config: DetectionConfig | None = None, *, vad: FrameClassifier | None = None
    ) -> None:
        self.config = config or DetectionConfig()
        self._given_vad = vad
        self._vad: FrameClassifier | None = vad
        self._beeps: BeepDetector | None = None
        self._rate = 0
        self._samples = 0  # fed at `_rate` since `_origin_ms` (a new rate starts a new count)
        self._origin_ms = 0.0
        self._audio_ms = 0.0  # audio time at the end of the last frame fed
        self.verdict: CalleeVerdict | None = None
        self.decisions: list[Detection] = []
        # The greeting: from its first confirmed speech to the last speech frame.
        self._greeting_start: float | None = None
        self._last_speech = 0.0
        self._run_start: float | None = None  # a run of speech frames not yet confirmed
        self._run_end = 0.0
        self._toning = False
        self._words_after = -1.0  # audio time of the last final transcript
        self._now = 0.0

    @property
    def decided(self) -> bool:
        """True once nothing more will come: a person, unknown, or a machine's greeting over."""
        return self.verdict in _FINAL

    @property
    def position_ms(self) -> float:
        """Audio time at the end of the last frame fed."""
        return self._now

    # ------------------------------------------------------------------ inputs

    def on_audio(self, pcm: npt.NDArray[np.int16], rate: int) -> list[Detection]:
        """Take the callee's next frame (mono PCM16 at `rate`, any size)."""
        if self.decided:
            return []
        if self._beeps is None or rate != self._rate:
            self._beeps, self._rate, self._samples = BeepDetector(rate), rate, 0
            self._vad = self._given_vad or EnergyVAD(rate=rate)
            self._origin_ms = self._audio_ms
        start_ms = self._audio_ms
        self._samples += int(pcm.shape[0])
        self._audio_ms = self._origin_ms + 1000.0 * self._samples / rate
        duration_ms = self._audio_ms - start_ms
        beeps = self._beeps.feed(pcm)
        assert self._vad is not None  # made with the beep detector
        speech = self._vad.is_speech(pcm)
        return self.observe(
            start_ms, duration_ms, speech=speech, toning=self._beeps.toning, beeps=beeps
        )

    def observe(
        self,
        start_ms: float,
        duration_ms: float,
        *,
        speech: bool,
        toning: bool = False,
        beeps: list[Beep] | None = None,
    ) -> list[Detection]:
        """Take one frame already classified: speech or not, part of a tone or not, and the
        beeps it completed. A tone is never speech (to an energy VAD a beep is loud)."""
        if self.decided:
            return []
        end_ms = start_ms + duration_ms
        self._now = max(self._now, end_ms)
        self._toning = toning
        out: list[Detection] = []
        for beep in beeps or []:
            if self.verdict is None:
                out += self._decide(
                    CalleeVerdict.MACHINE, beep.end_ms, "beep", f"{beep.frequency_hz:.0f} Hz"
                )
            out += self._decide(
                CalleeVerdict.MACHINE_DONE, beep.end_ms, "beep", f"{beep.frequency_hz:.0f} Hz"
            )
            return out
        if speech and not toning:
            if self._run_start is None:
                self._run_start = start_ms
            self._run_end = end_ms
            if self._greeting_start is not None:
                self._last_speech = end_ms
            elif end_ms - self._run_start >= self.config.min_speech_ms:
                self._greeting_start, self._last_speech = self._run_start, end_ms
        elif self._run_start is not None and end_ms - self._run_end > 60.0:
            self._run_start = None  # a run broken by more than a short dip was a noise burst
        return out + self._rules(self._now)

    def on_transcript(self, text: str, *, final: bool) -> list[Detection]:
        """Take a transcript of the callee (interim or final), timed at the audio so far."""
        if self.decided:
            return []
        if final:
            self._words_after = self._now
        phrase = machine_words(text)
        if phrase is not None and self.verdict is None:
            return self._decide(CalleeVerdict.MACHINE, self._now, "words", phrase)
        return self._rules(self._now)

    def tick(self, now_ms: float) -> list[Detection]:
        """Time passed with no frame (a silent line): apply the rules at `now_ms`."""
        if self.decided:
            return []
        self._now = max(self._now, now_ms)
        return self._rules(self._now)

    # ------------------------------------------------------------------- rules

    def _rules(self, now: float) -> list[Detection]:
        config = self.config
        start = self._greeting_start
        silence = now - self._last_speech if start is not None else 0.0
        speaking = start is not None and silence < config.human_silence_ms
        if self.verdict is CalleeVerdict.MACHINE:
            if start is not None and not self._toning and silence >= config.greeting_end_silence_ms:
                return self._decide(CalleeVerdict.MACHINE_DONE, now, "silence")
            return []
        length = self._last_speech - start if start is not None else 0.0
        judged_by_words = config.words_greeting_ms is not None
        long_ms = config.words_greeting_ms or config.machine_greeting_ms
        if start is not None and length >= long_ms:
            return self._decide(
                CalleeVerdict.MACHINE, now, "long-greeting", f"{now - start:.0f} ms"
            )
        if start is not None and not speaking and not self._toning:
            wait_ms = config.transcript_wait_ms
            if judged_by_words and length >= config.machine_greeting_ms:
                wait_ms = max(wait_ms, config.long_words_wait_ms)
            words_due = wait_ms > 0 and self._words_after < self._last_speech
            if not words_due or silence >= config.human_silence_ms + wait_ms:
                return self._decide(CalleeVerdict.HUMAN, now, "short-greeting", f"{length:.0f} ms")
        if now >= config.max_decision_ms:
            return self._decide(CalleeVerdict.UNKNOWN, now, "timeout")
        return []

    def _decide(
        self, verdict: CalleeVerdict, at_ms: float, reason: Reason, detail: str = ""
    ) -> list[Detection]:
        self.verdict = verdict
        detection = Detection(verdict, at_ms, reason, detail)
        self.decisions.append(detection)
        return [detection]


class GateDetector:
    """A call's `CalleeListener`: a `MachineDetector` on the callee's audio and words whose
    decisions become the gate's verdicts. `keep_time()` runs beside the call while it is
    screened: if the callee's frames stop (a line that sends nothing in silence), the
    detector's bounds still hold, on the wall clock since the listener was made (~ the
    answer, the audio's origin)."""

    def __init__(
        self,
        gate: VoicemailGate,
        config: DetectionConfig | None = None,
        *,
        vad: FrameClassifier | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.detector = MachineDetector(config, vad=vad)
        self._gate = gate
        self._clock = clock
        self._made_at = clock()
        self._heard_at = self._made_at  # when the last frame came

    def on_audio(self, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
        self._heard_at = self._clock()
        self._hand_over(self.detector.on_audio(pcm, sample_rate))

    def on_transcript(self, text: str, final: bool) -> None:
        self._hand_over(self.detector.on_transcript(text, final=final))

    async def keep_time(self, interval_s: float = 0.25) -> None:
        """Tick the detector while no frames come, until it has decided."""
        while not self.detector.decided:
            await asyncio.sleep(interval_s)
            now = self._clock()
            if now - self._heard_at >= interval_s:
                self._hand_over(self.detector.tick(1000.0 * (now - self._made_at)))

    def _hand_over(self, decisions: list[Detection]) -> None:
        for decision in decisions:
            log.info(
                "machine detection",
                extra={
                    "verdict": decision.verdict.value,
                    "at_ms": round(decision.at_ms),
                    "reason": decision.reason,
                    "detail": decision.detail,
                },
            )
            self._gate.verdict(decision.verdict, decision.at_ms)
