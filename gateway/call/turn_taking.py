"""Turn-taking on the caller's audio: when the caller speaks, what reaches the STT and when,
when a pause ends the caller's turn, and the span of each utterance until its transcript
arrives. Pure and synchronous: a turn model, when one judges pauses, runs outside (the
session runs it and hands back its verdict).

Order of calls: `feed()` each frame of caller audio (at the transport's rate), in order, and
carry out the steps it returns in the order given: `PushAudio` to the STT stream,
`CallerSound` / `SoundGone` (what may be speech began / stopped short: an agent speaking
may pause / play on), `CallerStarted` (speech confirmed), `JudgeTurn` (ask the turn model, then give
its answer to `verdict()` and carry out the steps that returns), `UtteranceEnded` (ask the
STT for the final transcript). When a final transcript arrives, `take_utterance()` gives
its span. `use_stt()` switches to another STT (the fallback) at any point.

A pause first lasts `pause_ms` (the VAD's silence). Unjudged, the turn ends then. Judged,
the turn ends once the silence reaches the wait its verdict gives (short when the turn
sounds and reads complete, longer when not; never over `max_wait_ms`); speech before that
continues the same turn.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from audio.frames import AudioFrame
from audio.resample import StreamResampler
from audio.vad import Endpointer, EnergyVAD, FrameClassifier, SpeechEnded, SpeechStarted
from gateway.providers.base import STT

JUDGE_RATE = 16000  # the turn model's input rate
JUDGE_WINDOW_S = 8.0  # the turn model looks at the last 8 s of the turn


@dataclass(frozen=True, slots=True)
class EndOfTurn:
    """When silence ends the caller's turn."""

    pause_ms: int  # the VAD's silence that makes a pause
    judged: bool = False  # each pause is judged (else the pause ends the turn)
    max_wait_ms: int = 0  # silence that ends a judged turn whatever the verdict (or none)


@dataclass(frozen=True, slots=True)
class PushAudio:
    """Send `frame` (at the STT's rate) to the STT stream; `quiet`: the VAD hears nothing
    in it and the caller is not mid-utterance."""

    frame: AudioFrame
    quiet: bool = False


@dataclass(frozen=True, slots=True)
class CallerSound:
    """The VAD hears what may be speech (not confirmed yet): an agent speaking may pause."""


@dataclass(frozen=True, slots=True)
class SoundGone:
    """What `CallerSound` announced stopped short of speech (a click, a cough)."""


@dataclass(frozen=True, slots=True)
class CallerStarted:
    """The VAD confirmed the caller speaking since `at_ms` (call audio time)."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class JudgeTurn:
    """A pause: judge whether the turn in `audio` (16 kHz, its last 8 s) is complete, and
    give the silence it should wait for to `verdict(pause, wait_ms)`."""

    pause: int
    audio: npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """The caller finished an utterance: the STT owes its final transcript."""


TurnStep = PushAudio | CallerSound | SoundGone | CallerStarted | JudgeTurn | UtteranceEnded


@dataclass(frozen=True, slots=True)
class Utterance:
    """Where an utterance sits in the call (ms of call audio) and the clock time it ended."""

    start_ms: float
    end_ms: float
    ended_at: float


@dataclass(slots=True)
class _Pause:
    """A pause being waited out: which one, where speech ended, what the model said."""

    number: int
    speech_end_ms: float
    wait_ms: float | None = None  # the silence the verdict asks for (None: not judged yet)


class TurnTaking:
    """The caller's side of the conversation: VAD, pre-roll, pauses and utterances awaiting
    text."""

    def __init__(
        self,
        stt: STT,
        *,
        rate: int,
        min_speech_ms: int,
        end_of_turn: EndOfTurn,
        preroll_ms: int,
        clock: Callable[[], float],
        started_at: float,
        vad: FrameClassifier | None = None,
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._started_at = started_at
        self._end = end_of_turn
        self._endpointer = Endpointer(
            rate=rate,
            min_speech_ms=min_speech_ms,
            silence_ms=end_of_turn.pause_ms,
            vad=vad or EnergyVAD(rate=rate),
        )
        # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT:
        # the last frames that cover `preroll_ms` (one frame at least).
        self._preroll_ms = preroll_ms
        self._preroll: collections.deque[AudioFrame] = collections.deque()
        self._preroll_kept_ms = 0.0
        self._speaking = False  # in an utterance: speech, or a pause not yet judged over
        self._start_ms = 0.0
        self._pause: _Pause | None = None
        self._pauses = 0
        self._hurried = False  # this utterance ends at its first pause, unjudged
        self._awaiting_text: collections.deque[Utterance] = collections.deque()
        # The turn's audio for the turn model (16 kHz, its last 8 s), kept only if judged.
        self._judge_resampler = StreamResampler(rate, JUDGE_RATE) if end_of_turn.judged else None
        self._turn_audio: collections.deque[npt.NDArray[np.int16]] = collections.deque()
        self._turn_samples = 0
        self.use_stt(stt)

    def use_stt(self, stt: STT) -> None:
        """Feed `stt` from now on: at its input rate, every frame or only the caller's speech."""
        self._continuous = stt.continuous
        self.stt_name = stt.name  # whose audio `PushAudio` frames are (usage is counted by it)
        self.stt_rate = stt.input_rate(self._rate)
        # None: the STT takes the transport's rate, and its frames as they come.
        self._resampler = (
            None if self.stt_rate == self._rate else StreamResampler(self._rate, self.stt_rate)
        )

    @property
    def caller_speaking(self) -> bool:
        """True from the VAD's start of an utterance to the end of its turn."""
        return self._speaking

    @property
    def utterances_open(self) -> int:
        """Utterances begun and not yet matched with their final transcript."""
        return len(self._awaiting_text) + (1 if self._speaking else 0)

    @property
    def speech_ms(self) -> float:
        """How long the current utterance has lasted up to its last speech (its trailing
        silence does not count; 0 when the caller is not speaking)."""
        if not self._speaking:
            return 0.0
        return max(0.0, self._endpointer.last_speech_ms - self._start_ms)

    @property
    def hearing(self) -> bool:
        """True while the VAD hears what may be speech (confirmed or not)."""
        return self._endpointer.hearing

    @property
    def caller_quiet(self) -> bool:
        """True while the VAD hears nothing and no utterance is under way (no turn is timed
        on the frames then: a carrier may hand them over in longer ones)."""
        return not (self._speaking or self._endpointer.hearing)

    @property
    def silence_ms(self) -> float:
        """How long since the caller's last speech."""
        return self._endpointer.position_ms - self._endpointer.last_speech_ms

    def feed(self, frame: AudioFrame) -> list[TurnStep]:
        """Take one frame of caller audio; return what to do with it, in order."""
        resampler = self._resampler
        stt_frame = (
            frame if resampler is None else AudioFrame(resampler.process(frame.pcm), self.stt_rate)
        )
        self._keep_for_judge(frame)
        was_speaking = self._speaking
        was_hearing = self._endpointer.hearing
        events = self._endpointer.feed(frame.pcm)
        steps: list[TurnStep] = []
        if not was_speaking and self._endpointer.hearing != was_hearing:
            steps.append(CallerSound() if self._endpointer.hearing else SoundGone())
        for event in events:
            if isinstance(event, SpeechStarted):
                if self._speaking:  # speech again within a pause: the same turn goes on
                    self._pause = None
                    continue
                self._speaking = True
                self._start_ms = event.at_ms
                if not self._continuous:
                    steps += [PushAudio(f) for f in self._preroll]
                self._preroll.clear()
                self._preroll_kept_ms = 0.0
                steps.append(CallerStarted(event.at_ms))
        # The frame that ends an utterance still belongs to it.
        if self._continuous or self._speaking or was_speaking:
            steps.append(PushAudio(stt_frame, self.caller_quiet and not was_speaking))
        else:
            self._keep_preroll(stt_frame)
        for event in events:
            if isinstance(event, SpeechEnded) and self._speaking:
                steps += self._paused(event.at_ms)
        if self._pause is not None:
            steps += self._pause_over()
        return steps

    def hurry(self, hurried: bool = True) -> None:
        """End the current utterance at its first pause, unjudged (the agent waits on it to
        know whether it was an interruption); `hurry(False)`: judge its pauses again (it
        was one, and the caller may pause mid-sentence)."""
        self._hurried = hurried
        if hurried and self._pause is not None and self._pause.wait_ms is None:
            self._pause.wait_ms = 0

    def verdict(self, pause: int, wait_ms: float) -> list[TurnStep]:
        """The judgement of pause number `pause`: the turn ends once its silence lasts
        `wait_ms` (at most the longest wait). Returns the steps due now (a verdict on a
        pause that speech already ended is ignored)."""
        if self._pause is None or self._pause.number != pause:
            return []
        self._pause.wait_ms = min(wait_ms, self._end.max_wait_ms)
        return self._pause_over()

    def take_utterance(self) -> Utterance:
        """The span of the oldest utterance still awaiting its final transcript. A transcript
        the VAD did not ask for (the STT closed it itself) spans the call up to now."""
        if self._awaiting_text:
            return self._awaiting_text.popleft()
        now = self._clock()
        return Utterance(0.0, (now - self._started_at) * 1000.0, now)

    # ------------------------------------------------------------------ internals

    def _paused(self, speech_end_ms: float) -> list[TurnStep]:
        """The VAD heard `pause_ms` of silence after speech that ended at `speech_end_ms`."""
        if not self._end.judged or self._hurried:
            return self._turn_ends(speech_end_ms)
        self._pauses += 1
        self._pause = _Pause(self._pauses, speech_end_ms)
        audio = np.concatenate(self._turn_audio) if self._turn_audio else np.zeros(0, np.int16)
        return [JudgeTurn(self._pauses, audio)]

    def _pause_over(self) -> list[TurnStep]:
        """The turn ends if the pause has lasted the wait its verdict asks for."""
        pause = self._pause
        assert pause is not None
        silence_ms = self._endpointer.position_ms - pause.speech_end_ms
        # Not judged yet (the model is slow): the longest wait still ends the turn.
        wait_ms = self._end.max_wait_ms if pause.wait_ms is None else pause.wait_ms
        if silence_ms < wait_ms:
            return []
        return self._turn_ends(pause.speech_end_ms)

    def _turn_ends(self, speech_end_ms: float) -> list[TurnStep]:
        self._speaking = False
        self._hurried = False
        self._pause = None
        self._turn_audio.clear()
        self._turn_samples = 0
        # The VAD reports the end some silence late; date it back on the clock.
        lag_s = (self._endpointer.position_ms - speech_end_ms) / 1000.0
        ended_at = self._clock() - lag_s
        self._awaiting_text.append(Utterance(self._start_ms, speech_end_ms, ended_at))
        return [UtteranceEnded()]

    def _keep_preroll(self, frame: AudioFrame) -> None:
        preroll = self._preroll
        preroll.append(frame)
        self._preroll_kept_ms += frame.duration_ms
        while len(preroll) > 1 and (
            self._preroll_kept_ms - preroll[0].duration_ms >= self._preroll_ms
        ):
            self._preroll_kept_ms -= preroll.popleft().duration_ms

    def _keep_for_judge(self, frame: AudioFrame) -> None:
        """Keep the frame for the turn model: the turn's audio plus a pre-roll before it."""
        if self._judge_resampler is None:
            return
        pcm = self._judge_resampler.process(frame.pcm)
        self._turn_audio.append(pcm)
        self._turn_samples += int(pcm.shape[0])
        keep = int(JUDGE_WINDOW_S * JUDGE_RATE) if self._speaking else JUDGE_RATE // 2
        while self._turn_audio and self._turn_samples - self._turn_audio[0].shape[0] >= keep:
            self._turn_samples -= int(self._turn_audio.popleft().shape[0])
