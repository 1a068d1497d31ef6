"""Cost of voice activity detection per 20 ms frame, and of one end-of-turn judgement.

    python bench/vad_bench.py

VAD: EnergyVAD against SileroVAD (with its quiet-chunk gate and without) at 8 and 16 kHz,
on espeak-ng speech over a quiet line (-70 dBFS) and on that line alone. A pass feeds
FRAMES frames; the figure is µs per frame over the pass (Silero runs once per 32 ms chunk,
so single frames cost either nothing or a whole inference), median of RUNS passes; p99 is
of single frames, timed one by one in RUNS further passes. Smart Turn: ms per
`completion_probability` on 8 s of 16 kHz speech (features and inference), median of 20,
with the features alone beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from audio.models import locate_models
from audio.silero import SileroModel
from audio.smart_turn import SmartTurnModel, fit_to_window, log_mel
from audio.vad import EnergyVAD
from gateway.settings import Settings
from tests.espeak import speak

FRAMES = 1500  # 30 s
RUNS = 7
TEXT = (
    "Hello, I would like to book a table for four people tomorrow evening at eight. "
    "Do you have anything near the window? My name is Alex, and my number is 555 0199."
)

PCM = npt.NDArray[np.int16]


def _line(rate: int, samples: int, seed: int) -> PCM:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(samples) * 32768 * 10 ** (-70 / 20)).astype(np.int16)


def _signals(rate: int) -> dict[str, PCM]:
    samples = FRAMES * rate // 50
    speech = speak(TEXT, rate)
    speech = np.tile(speech, samples // speech.size + 1)[:samples]
    return {"speech": speech + _line(rate, samples, 1), "quiet line": _line(rate, samples, 2)}


def _pass(make: Callable[[], Callable[[PCM], bool]], pcm: PCM, rate: int) -> float:
    """µs per frame over one pass."""
    frame = rate // 50
    is_speech = make()
    frames = [pcm[i : i + frame] for i in range(0, pcm.size, frame)]
    t0 = time.perf_counter_ns()
    for f in frames:
        is_speech(f)
    return (time.perf_counter_ns() - t0) / 1000 / len(frames)


def _singles(make: Callable[[], Callable[[PCM], bool]], pcm: PCM, rate: int) -> list[float]:
    """µs of each frame of one pass."""
    frame = rate // 50
    is_speech = make()
    costs = []
    for i in range(0, pcm.size, frame):
        f = pcm[i : i + frame]
        t0 = time.perf_counter_ns()
        is_speech(f)
        costs.append((time.perf_counter_ns() - t0) / 1000)
    return costs


def _vad_table(silero: SileroModel) -> None:
    detectors: dict[str, Callable[[int], Callable[[], Callable[[PCM], bool]]]] = {
        "EnergyVAD": lambda rate: lambda: EnergyVAD(rate=rate).is_speech,
        "SileroVAD, gate -60 dBFS": lambda rate: lambda: silero.stream(rate).is_speech,
        "SileroVAD, no gate": lambda rate: lambda: silero.stream(rate, gate_dbfs=None).is_speech,
    }
    print(f"{'detector':26s} {'rate':>6s} {'signal':11s} {'µs/frame':>9s} {'p99 µs':>8s}")
    for rate in (8000, 16000):
        signals = _signals(rate)
        for name, factory in detectors.items():
            for signal, pcm in signals.items():
                _pass(factory(rate), pcm[: 100 * rate // 50], rate)  # warm-up
                means = [_pass(factory(rate), pcm, rate) for _ in range(RUNS)]
                singles = [c for _ in range(RUNS) for c in _singles(factory(rate), pcm, rate)]
                p99 = sorted(singles)[int(len(singles) * 0.99)]
                print(
                    f"{name:26s} {rate:6d} {signal:11s} {statistics.median(means):9.1f} {p99:8.1f}"
                )


def _turn_table(turn: SmartTurnModel) -> None:
    speech = speak(TEXT, 16000)
    speech = np.tile(speech, 2)[: 8 * 16000]
    window = fit_to_window(speech)
    for _ in range(3):
        turn.completion_probability(speech)
    whole, features = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        turn.completion_probability(speech)
        t1 = time.perf_counter()
        log_mel(window)
        t2 = time.perf_counter()
        whole.append((t1 - t0) * 1000)
        features.append((t2 - t1) * 1000)
    print(
        f"SmartTurnModel, 8 s input, 1 thread: {statistics.median(whole):.1f} ms per inference "
        f"(of which features {statistics.median(features):.1f} ms), "
        f"max {max(whole):.1f} ms over 20"
    )


def main() -> None:
    paths = locate_models(Settings().turn_models_dir)
    _vad_table(SileroModel.load(paths.silero))
    print()
    _turn_table(SmartTurnModel.load(paths.smart_turn))


if __name__ == "__main__":
    main()
