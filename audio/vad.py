"""Voice activity detection and end-of-turn detection on PCM frames (energy with an
adaptive noise floor; pure and synchronous)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

_FULL_SCALE_POWER = 32768.0**2


def frame_level_dbfs(pcm: npt.NDArray[np.int16]) -> float:
    """RMS level of a frame in dB relative to full scale."""
    if pcm.size == 0:
        return -120.0
    power = float(np.mean(np.square(pcm, dtype=np.float64)))
    return 10.0 * float(np.log10(power / _FULL_SCALE_POWER + 1e-12))


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at `at_ms` (stream time; confirmed `min_speech_ms` later)."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Speech ended at `at_ms` (stream time; reported after `silence_ms` of silence)."""

    at_ms: float


EndpointEvent = SpeechStarted | SpeechEnded


class FrameClassifier(Protocol):
    """A per-stream speech / no-speech decision on each frame (energy or neural)."""

    def is_speech(self, pcm: npt.NDArray[np.int16]) -> bool: ...


class EnergyVAD:
    """Classifies frames as speech when they stand out from the noise floor.

    The floor is the quietest frame of the last `window_frames` (minimum statistics):
    speech always has pauses between words, so the minimum follows the background even
    while someone talks, and a steady noise stops counting as speech within the window.
    """

    def __init__(
        self, *, margin_db: float = 12.0, min_level_dbfs: float = -48.0, window_frames: int = 100
    ) -> None:
        self._margin_db = margin_db
        self._min_level = min_level_dbfs
        self._levels: collections.deque[float] = collections.deque(maxlen=window_frames)

    @property
    def noise_floor_dbfs(self) -> float:
        return min(self._levels) if self._levels else -90.0

    def is_speech(self, pcm: npt.NDArray[np.int16]) -> bool:
        level = frame_level_dbfs(pcm)
        self._levels.append(level)
        floor = max(self.noise_floor_dbfs, -90.0)
        return level > self._min_level and level > floor + self._margin_db


class Endpointer:
    """Turns per-frame speech decisions into `SpeechStarted` / `SpeechEnded` events.

    Feed every frame of the stream, in order, with `feed()`; timestamps count the samples
    fed, so they sit on the call's audio timeline.
    """

    def __init__(
        self,
        *,
        rate: int,
        min_speech_ms: int = 120,
        silence_ms: int = 600,
        vad: FrameClassifier | None = None,
    ) -> None:
        self._rate = rate
        self._min_speech_ms = min_speech_ms
        self._silence_ms = silence_ms
        self._vad = vad or EnergyVAD()
        self._samples = 0
        self._in_speech = False
        self._run_start_ms: float | None = None  # start of the current candidate speech run
        self._run_ms = 0.0
        self._gap_ms = 0.0
        self._last_speech_end_ms = 0.0

    @property
    def position_ms(self) -> float:
        """Stream time at the end of the last frame fed."""
        return 1000.0 * self._samples / self._rate

    def feed(self, pcm: npt.NDArray[np.int16]) -> list[EndpointEvent]:
        """Take one frame; return the events it completes (usually none)."""
        start_ms = 1000.0 * self._samples / self._rate
        self._samples += int(pcm.size)
        end_ms = 1000.0 * self._samples / self._rate
        frame_ms = end_ms - start_ms
        speech = self._vad.is_speech(pcm)
        events: list[EndpointEvent] = []
        if speech:
            self._last_speech_end_ms = end_ms
            self._gap_ms = 0.0
            if self._run_start_ms is None:
                self._run_start_ms = start_ms
                self._run_ms = 0.0
            self._run_ms += frame_ms
            if not self._in_speech and self._run_ms >= self._min_speech_ms:
                self._in_speech = True
                events.append(SpeechStarted(self._run_start_ms))
        else:
            self._gap_ms += frame_ms
            if self._in_speech:
                if self._gap_ms >= self._silence_ms:
                    self._in_speech = False
                    self._run_start_ms = None
                    events.append(SpeechEnded(self._last_speech_end_ms))
            elif self._gap_ms > 60.0:
                # A candidate run broken by more than a short dip was a noise burst.
                self._run_start_ms = None
                self._run_ms = 0.0
        return events
