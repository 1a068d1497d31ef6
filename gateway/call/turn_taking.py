"""Turn-taking on the caller's audio: when the caller speaks, what reaches the STT and when,
and the span of each utterance until its transcript arrives. Pure and synchronous.

Order of calls: `feed()` each frame of caller audio (at the transport's rate), in order, and
carry out the steps it returns in the order given: `PushAudio` to the STT stream,
`CallerStarted` (an agent still speaking is barged in on), `UtteranceEnded` (ask the STT for
the final transcript). When a final transcript arrives, `take_utterance()` gives its span.
`use_stt()` switches to another STT (the fallback) at any point.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from audio.frames import AudioFrame
from audio.resample import StreamResampler
from audio.vad import Endpointer, SpeechEnded, SpeechStarted
from gateway.providers.base import STT


@dataclass(frozen=True, slots=True)
class PushAudio:
    """Send `frame` (at the STT's rate) to the STT stream."""

    frame: AudioFrame


@dataclass(frozen=True, slots=True)
class CallerStarted:
    """The VAD confirmed the caller speaking since `at_ms` (call audio time)."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """The caller finished an utterance: the STT owes its final transcript."""


TurnStep = PushAudio | CallerStarted | UtteranceEnded


@dataclass(frozen=True, slots=True)
class Utterance:
    """Where an utterance sits in the call (ms of call audio) and the clock time it ended."""

    start_ms: float
    end_ms: float
    ended_at: float


class TurnTaking:
    """The caller's side of the conversation: VAD, pre-roll and utterances awaiting text."""

    def __init__(
        self,
        stt: STT,
        *,
        rate: int,
        min_speech_ms: int,
        silence_ms: int,
        preroll_ms: int,
        clock: Callable[[], float],
        started_at: float,
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._started_at = started_at
        self._endpointer = Endpointer(rate=rate, min_speech_ms=min_speech_ms, silence_ms=silence_ms)
        # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT.
        frames_kept = max(1, preroll_ms // 20)
        self._preroll: collections.deque[AudioFrame] = collections.deque(maxlen=frames_kept)
        self._speaking = False
        self._start_ms = 0.0
        self._awaiting_text: collections.deque[Utterance] = collections.deque()
        self.use_stt(stt)

    def use_stt(self, stt: STT) -> None:
        """Feed `stt` from now on: at its input rate, every frame or only the caller's speech."""
        self._continuous = stt.continuous
        self.stt_rate = stt.input_rate(self._rate)
        self._resampler = StreamResampler(self._rate, self.stt_rate)

    @property
    def caller_speaking(self) -> bool:
        """True between the VAD's start and end of an utterance."""
        return self._speaking

    def feed(self, frame: AudioFrame) -> list[TurnStep]:
        """Take one frame of caller audio; return what to do with it, in order."""
        stt_frame = AudioFrame(self._resampler.process(frame.pcm), self.stt_rate)
        was_speaking = self._speaking
        events = self._endpointer.feed(frame.pcm)
        steps: list[TurnStep] = []
        for event in events:
            if isinstance(event, SpeechStarted):
                self._speaking = True
                self._start_ms = event.at_ms
                if not self._continuous:
                    steps += [PushAudio(f) for f in self._preroll]
                self._preroll.clear()
                steps.append(CallerStarted(event.at_ms))
        # The frame that ends an utterance still belongs to it.
        if self._continuous or self._speaking or was_speaking:
            steps.append(PushAudio(stt_frame))
        else:
            self._preroll.append(stt_frame)
        for event in events:
            if isinstance(event, SpeechEnded):
                self._speaking = False
                # The VAD reports the end `silence_ms` late; date it back on the clock.
                lag_s = (self._endpointer.position_ms - event.at_ms) / 1000.0
                ended_at = self._clock() - lag_s
                self._awaiting_text.append(Utterance(self._start_ms, event.at_ms, ended_at))
                steps.append(UtteranceEnded())
        return steps

    def take_utterance(self) -> Utterance:
        """The span of the oldest utterance still awaiting its final transcript. A transcript
        the VAD did not ask for (the STT closed it itself) spans the call up to now."""
        if self._awaiting_text:
            return self._awaiting_text.popleft()
        now = self._clock()
        return Utterance(0.0, (now - self._started_at) * 1000.0, now)
