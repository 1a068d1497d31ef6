"""Smart Turn v3.2: the probability that a caller's turn is complete, from its audio alone.

The model (a Whisper-tiny encoder with a classifier, ONNX) takes the last 8 s of the turn at
16 kHz as Whisper log-mel features, [1, 80, 800], and answers a probability in [0, 1]. The
features are computed here in numpy as Whisper's feature extractor does: waveform
normalised to zero mean and unit variance, centred (reflect-padded) periodic-Hann STFT with
n_fft 400 and hop 160, power spectrum onto 80 Slaney-normalised mel filters (Slaney scale,
0-8 kHz), log10 with a 1e-10 floor, the last frame dropped, clamped to 8 below the maximum,
then (x + 4) / 4.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view

from audio.models import SMART_TURN_SHA256, check_model

RATE = 16000
SECONDS = 8
N_FFT = 400
HOP = 160
N_MELS = 80
_SAMPLES = RATE * SECONDS
_FRAMES = _SAMPLES // HOP  # 800


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
    step = math.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(hz, 1000.0) / 1000.0) / step
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, above)


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    step = math.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * step))


@functools.cache
def mel_filters() -> npt.NDArray[np.float64]:
    """Triangular mel filters [80, 201] over the rFFT bins, each of unit area (Slaney norm)."""
    bins = np.fft.rfftfreq(N_FFT, d=1.0 / RATE)
    edges_mel = np.linspace(0.0, float(_hz_to_mel(np.array(RATE / 2.0))), N_MELS + 2)
    edges = _mel_to_hz(edges_mel)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    return triangles * (2.0 / (upper - lower))


@functools.cache
def _hann() -> npt.NDArray[np.float64]:
    """Periodic Hann window (as torch.hann_window and Whisper use)."""
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)


def fit_to_window(pcm16k: npt.NDArray[np.int16]) -> npt.NDArray[np.float32]:
    """The last 8 s as float in [-1, 1), zero-padded at the start when shorter."""
    audio = np.zeros(_SAMPLES, dtype=np.float32)
    tail = pcm16k[-_SAMPLES:]
    if tail.size:
        audio[-tail.size :] = tail.astype(np.float32) / np.float32(32768.0)
    return audio


def log_mel(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Whisper log-mel features [80, 800] of exactly 8 s of 16 kHz audio."""
    if audio.shape != (_SAMPLES,):
        raise ValueError(f"expected {_SAMPLES} samples, got shape {audio.shape}")
    # Normalised in float32 before the float64 STFT, as Whisper's extractor does.
    x = (audio - audio.mean()) / np.sqrt(audio.var() + np.float32(1e-7))
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = sliding_window_view(padded, N_FFT)[::HOP]  # [801, 400]
    power: npt.NDArray[np.float64] = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2
    mel = np.log10(np.maximum(power @ mel_filters().T, 1e-10))[:_FRAMES]  # [800, 80]
    mel = np.maximum(mel, mel.max() - 8.0)
    features: npt.NDArray[np.float32] = ((mel + 4.0) / 4.0).T.astype(np.float32)
    return features


class SmartTurnModel:
    """The Smart Turn v3.2 network; one per process, safe to call from several threads."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path, *, threads: int = 1) -> SmartTurnModel:
        """Load the model at `path` after checking its hash (`ModelMissing` if absent or bad)."""
        check_model(path, SMART_TURN_SHA256)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return cls(session)

    def completion_probability(self, pcm16k: npt.NDArray[np.int16]) -> float:
        """Probability that the turn so far (16 kHz; the last 8 s count) is complete."""
        features = log_mel(fit_to_window(pcm16k))[None]
        (output,) = self._session.run(None, {self._input: features})
        return float(output[0, 0])
