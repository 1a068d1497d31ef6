"""Answering-machine beep detection on a PCM stream (pure, synchronous, one object per stream).

A machine's beep is a steady single tone (~400-2500 Hz) lasting a few hundred milliseconds,
with almost nothing else in the spectrum. Speech is never that: a vowel is harmonic (its
energy is spread over many partials and its pitch glides), consonants are noise. So each
20 ms block is windowed and transformed; it is "tonal" when the narrow peak of its power
spectrum (the peak bin and one on each side: a Hann window's main lobe) holds at least
`dominance` of the block's power and sits in the beep band, and a beep is a run of tonal
blocks whose peak frequency stays within `max_drift_hz` of the run's first, for at least
`min_ms` of whole blocks (a tone fills its first and last blocks only in part, so the
default 120 ms finds any tone of 150 ms or more, wherever it falls). The beep is reported
when the tone stops (a message must start after it), or once it has lasted `max_ms` (a tone
that never stops is not waited on).

Cost: one real FFT of 160 (8 kHz) or 320 (16 kHz) samples per 20 ms block; see
bench/voicemail_bench.py for the measured µs per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_BLOCK_MS = 20
_FULL_SCALE_POWER = 32768.0**2


@dataclass(frozen=True, slots=True)
class Beep:
    """A tone from `start_ms` to `end_ms` (stream time) at about `frequency_hz`."""

    start_ms: float
    end_ms: float
    frequency_hz: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


class BeepDetector:
    """Finds beeps in one stream. Feed every frame in order with `feed()` (any size; samples
    are cut into 20 ms blocks); it returns the beeps completed by that frame. Times count
    the samples fed, so they sit on the stream's timeline.

    `toning` says whether the latest block belongs to a tone under way (a caller may then
    keep that block out of its speech detection: to an energy VAD a beep is loud speech).
    """

    def __init__(
        self,
        rate: int,
        *,
        low_hz: float = 400.0,
        high_hz: float = 2500.0,
        dominance: float = 0.9,
        min_ms: float = 120.0,
        max_ms: float = 2000.0,
        max_drift_hz: float = 40.0,
        min_level_dbfs: float = -40.0,
    ) -> None:
        if rate < 2 * high_hz:
            raise ValueError(f"{rate} Hz cannot carry tones up to {high_hz} Hz")
        self._rate = rate
        self._block = rate * _BLOCK_MS // 1000
        self._bin_hz = rate / self._block
        self._window = np.hanning(self._block).astype(np.float64)
        # Power of the window's samples, so that levels are those of the unwindowed block.
        self._window_gain = float(np.sum(self._window**2))
        self._low_bin = max(2, int(np.ceil(low_hz / self._bin_hz)))
        self._high_bin = min(self._block // 2 - 2, int(np.floor(high_hz / self._bin_hz)))
        self._dominance = dominance
        self._min_ms = min_ms
        self._max_ms = max_ms
        self._max_drift_hz = max_drift_hz
        self._min_power = (10.0 ** (min_level_dbfs / 10.0)) * _FULL_SCALE_POWER
        self._pending = np.zeros(self._block, dtype=np.float64)
        self._filled = 0
        self._blocks = 0  # blocks analysed so far
        self._run_start: int | None = None  # first block of the tone under way
        self._run_blocks = 0
        self._run_hz = 0.0  # the run's frequency (its first block's)
        self._reported = False  # the run under way was reported (it reached max_ms)

    @property
    def toning(self) -> bool:
        """True while the latest block continues (or starts) a tone."""
        return self._run_start is not None

    def feed(self, pcm: npt.NDArray[np.int16]) -> list[Beep]:
        """Take the next frame of the stream; return the beeps it completes (usually none)."""
        beeps: list[Beep] = []
        start = 0
        size = int(pcm.shape[0])
        while start < size:
            take = min(self._block - self._filled, size - start)
            self._pending[self._filled : self._filled + take] = pcm[start : start + take]
            self._filled += take
            start += take
            if self._filled == self._block:
                self._filled = 0
                beep = self._analyse(self._pending)
                if beep is not None:
                    beeps.append(beep)
        return beeps

    def tone_hz(self, block: npt.NDArray[np.float64]) -> float | None:
        """The frequency of `block` (one 20 ms block) if it is a dominant tone in the band."""
        spectrum = np.fft.rfft(block * self._window)
        power = spectrum.real**2 + spectrum.imag**2
        total = float(power.sum())
        # Parseval, with the window's gain: mean square of the block ~ total / (N * gain / 2).
        if total * 2.0 / (self._block * self._window_gain) < self._min_power:
            return None
        peak = self._low_bin + int(np.argmax(power[self._low_bin : self._high_bin + 1]))
        lobe = power[peak - 1 : peak + 2]
        if float(lobe.sum()) < self._dominance * total:
            return None
        # Parabolic interpolation on log power: the frequency to a fraction of a bin.
        a, b, c = np.log(lobe + 1e-9)
        denominator = a - 2.0 * b + c
        offset = 0.5 * (a - c) / denominator if denominator != 0.0 else 0.0
        return (peak + float(offset)) * self._bin_hz

    def _analyse(self, block: npt.NDArray[np.float64]) -> Beep | None:
        index = self._blocks
        self._blocks += 1
        hz = self.tone_hz(block)
        if hz is not None and self._run_start is not None:
            if abs(hz - self._run_hz) <= self._max_drift_hz:
                self._run_blocks += 1
                if not self._reported and self._run_blocks * _BLOCK_MS >= self._max_ms:
                    self._reported = True
                    return self._beep(index + 1)
                return None
            ended = self._end_run(index)  # another tone: this run ends, the new one starts
            self._start_run(index, hz)
            return ended
        if hz is not None:
            self._start_run(index, hz)
            return None
        return self._end_run(index)

    def _start_run(self, index: int, hz: float) -> None:
        self._run_start = index
        self._run_blocks = 1
        self._run_hz = hz
        self._reported = False

    def _end_run(self, index: int) -> Beep | None:
        if self._run_start is None:
            return None
        long_enough = self._run_blocks * _BLOCK_MS >= self._min_ms
        beep = self._beep(index) if long_enough and not self._reported else None
        self._run_start = None
        self._run_blocks = 0
        return beep

    def _beep(self, end_block: int) -> Beep:
        assert self._run_start is not None
        return Beep(
            start_ms=float(self._run_start * _BLOCK_MS),
            end_ms=float(end_block * _BLOCK_MS),
            frequency_hz=round(self._run_hz, 1),
        )
