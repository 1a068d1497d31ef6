"""Speech for tests: espeak-ng synthesis (`espeak-ng --stdout`, 22050 Hz WAV) and Festival's
`text2wave` (16 kHz WAV), at any rate."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soxr

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"
)
needs_festival = pytest.mark.skipif(
    shutil.which("text2wave") is None, reason="festival is not installed"
)


def _wav_at(wav: bytes, rate: int) -> npt.NDArray[np.int16]:
    with wave.open(io.BytesIO(wav)) as reader:
        source_rate = reader.getframerate()
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    out: npt.NDArray[np.int16] = soxr.resample(pcm, source_rate, rate).astype(np.int16)
    return out


def speak(
    text: str,
    rate: int,
    *,
    voice: str = "en-us",
    words_per_minute: int | None = None,
    pitch: int | None = None,
) -> npt.NDArray[np.int16]:
    """`text` spoken by espeak-ng, resampled to `rate`, with its trailing silence kept;
    `words_per_minute` (espeak's default 175) and `pitch` (0-99, default 50) vary the voice."""
    command = ["espeak-ng", "--stdout", "-v", voice]
    if words_per_minute is not None:
        command += ["-s", str(words_per_minute)]
    if pitch is not None:
        command += ["-p", str(pitch)]
    wav = subprocess.run([*command, text], capture_output=True, check=True).stdout
    return _wav_at(wav, rate)


def festival_speak(text: str, rate: int) -> npt.NDArray[np.int16]:
    """`text` spoken by Festival's default voice (`text2wave`), resampled to `rate`."""
    with tempfile.TemporaryDirectory() as directory:  # text2wave seeks in its output
        path = Path(directory) / "speech.wav"
        subprocess.run(
            ["text2wave", "-o", str(path)], input=text.encode(), capture_output=True, check=True
        )
        return _wav_at(path.read_bytes(), rate)


def speech_span(pcm: npt.NDArray[np.int16], *, level: int = 300) -> tuple[int, int]:
    """First and one-past-last sample louder than `level`."""
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return int(loud[0]), int(loud[-1]) + 1
