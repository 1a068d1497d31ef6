"""Voice activity detection and end-of-turn detection on PCM frames (energy with an
adaptive noise floor; pure and synchronous)."""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

_FULL_SCALE_POWER = 32768.0**2
_NO_POWER = 1e-12  # -120 dBFS: what an empty frame, or digital silence, measures
_FLOOR_MIN_POWER = 1e-9  # -90 dBFS: a digitally silent line does not make every sound speech


def frame_power(pcm: npt.NDArray[np.int16]) -> float:
    """Mean power of a frame relative to full scale (plus -120 dB, so a log is defined):
    integer energy, one dot product over the samples (about 1 µs for 20 ms at 8 kHz)."""
    if pcm.size == 0:
        return _NO_POWER
    samples = pcm.astype(np.int64)
    return int(np.dot(samples, samples)) / (pcm.size * _FULL_SCALE_POWER) + _NO_POWER


def frame_level_dbfs(pcm: npt.NDArray[np.int16]) -> float:
    """RMS level of a frame in dB relative to full scale."""
    return 10.0 * math.log10(frame_power(pcm))


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

    The floor is the quietest frame of the last `window_ms` (minimum statistics): speech
    always has pauses between words, so the minimum follows the background even while
    someone talks, and a steady noise stops counting as speech within the window. The
    window counts samples at `rate`, so it spans the same time whatever the frames' length.

    Per frame: one integer dot product and a sliding minimum (a deque of increasing
    powers), compared as powers, not decibels: a few microseconds.
    """

    def __init__(
        self,
        *,
        rate: int,
        margin_db: float = 12.0,
        min_level_dbfs: float = -48.0,
        window_ms: int = 2000,
    ) -> None:
        self._margin = math.pow(10.0, margin_db / 10.0)
        self._min_power = math.pow(10.0, min_level_dbfs / 10.0)
        self._window = max(1, rate * window_ms // 1000)
        self._samples = 0  # samples classified so far
        # (first sample, power) of the frames that may still become the window's minimum,
        # powers increasing: the first is the minimum of the window.
        self._floor: collections.deque[tuple[int, float]] = collections.deque()

    @property
    def noise_floor_dbfs(self) -> float:
        return 10.0 * math.log10(self._floor[0][1]) if self._floor else -90.0

    def is_speech(self, pcm: npt.NDArray[np.int16]) -> bool:
        power = frame_power(pcm)
        first = self._samples
        self._samples += int(pcm.shape[0])
        floor = self._floor
        while floor and floor[-1][1] >= power:
            floor.pop()
        floor.append((first, power))
        # Frames that began before the window (the last `window` samples) leave it.
        while floor[0][0] < self._samples - self._window and len(floor) > 1:
            floor.popleft()
        floor_power = max(floor[0][1], _FLOOR_MIN_POWER)
        return power > self._min_power and power > floor_power * self._margin


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
        self._vad = vad or EnergyVAD(rate=rate)
        self._samples = 0
        self._in_speech = False
        self._run_start_ms: float | None = None  # start of the current candidate speech run
        self._run_ms = 0.0
        self._gap_ms = 0.0
        self._last_speech_end_ms = 0.0

    @property
    def hearing(self) -> bool:
        """True while a run of speech frames is under way (confirmed or not yet)."""
        return self._run_start_ms is not None

    @property
    def last_speech_ms(self) -> float:
        """Stream time at the end of the last frame classified as speech."""
        return self._last_speech_end_ms

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
