"""Speech for tests: espeak-ng synthesis (`espeak-ng --stdout`, 22050 Hz WAV) at any rate."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np
import numpy.typing as npt
import pytest
import soxr

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)


def speak(text: str, rate: int, *, voice: str = "en-us") -> npt.NDArray[np.int16]:
    """`text` spoken by espeak-ng, resampled to `rate`, with its trailing silence kept."""
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        source_rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    out: npt.NDArray[np.int16] = soxr.resample(pcm, source_rate, rate).astype(np.int16)
    return out


def speech_span(pcm: npt.NDArray[np.int16], *, level: int = 300) -> tuple[int, int]:
    """First and one-past-last sample louder than `level`."""
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return int(loud[0]), int(loud[-1]) + 1
