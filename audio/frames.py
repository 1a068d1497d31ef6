"""Audio frame value and fixed-size framing helpers for 20 ms telephony pacing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PCM16 = npt.NDArray[np.int16]

FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Mono PCM16 audio at a sample rate; the unit every layer above `audio/` passes around."""

    pcm: PCM16
    rate: int

    @property
    def samples(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.samples / self.rate


def samples_per_frame(rate: int, frame_ms: int = FRAME_MS) -> int:
    """Number of samples in one frame of `frame_ms` at `rate`."""
    return rate * frame_ms // 1000
