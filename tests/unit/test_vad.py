"""Energy VAD and endpointing on synthetic speech-like bursts and real espeak-ng speech."""

import shutil

import numpy as np
import pytest

from audio.codec import ulaw_decode
from audio.vad import Endpointer, EnergyVAD, SpeechEnded, SpeechStarted, frame_level_dbfs

RATE = 8000
FRAME = 160


def _voiced(ms: int, f0: float = 140.0, level: float = 6000.0) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    signal = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2  # syllable-like
    return (level * envelope * signal / 2).astype(np.int16)


def _noise(ms: int, dbfs: float = -60.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = 32768 * 10 ** (dbfs / 20)
    return (rng.standard_normal(RATE * ms // 1000) * sigma).astype(np.int16)


def _run(endpointer: Endpointer, pcm: np.ndarray) -> list[object]:
    events: list[object] = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        events.extend(endpointer.feed(pcm[i : i + FRAME]))
    return events


def test_level() -> None:
    assert frame_level_dbfs(np.zeros(160, dtype=np.int16)) < -100
    full = np.full(160, 32767, dtype=np.int16)
    assert abs(frame_level_dbfs(full)) < 0.01


def test_speech_start_and_end_with_timestamps() -> None:
    pcm = np.concatenate([_noise(1000), _voiced(1200) + _noise(1200, seed=1), _noise(1500, seed=2)])
    events = _run(Endpointer(rate=RATE, min_speech_ms=120, silence_ms=600), pcm)
    assert len(events) == 2
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert abs(started.at_ms - 1000) <= 40
    assert abs(ended.at_ms - 2200) <= 40


def test_comfort_noise_and_clicks_are_not_speech() -> None:
    click = _voiced(60)
    pcm = np.concatenate([_noise(2000), click, _noise(2000, seed=3)])
    assert _run(Endpointer(rate=RATE), pcm) == []


def test_short_pauses_inside_a_turn_do_not_end_it() -> None:
    speech = np.concatenate([_voiced(500), np.zeros(RATE * 300 // 1000, np.int16), _voiced(500)])
    pcm = np.concatenate([_noise(500), speech, _noise(1000, seed=4)])
    events = _run(Endpointer(rate=RATE, silence_ms=600), pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]


def test_noise_floor_adapts_to_louder_background() -> None:
    vad = EnergyVAD(rate=RATE)
    noise = _noise(3000, dbfs=-40.0)
    decisions = [vad.is_speech(noise[i : i + FRAME]) for i in range(0, len(noise), FRAME)]
    assert not any(decisions[-50:])
    assert vad.noise_floor_dbfs > -45


def test_noise_floor_is_the_quietest_frame_of_the_window() -> None:
    """The sliding minimum against the plain one, over levels that rise, fall and repeat."""
    rng = np.random.default_rng(7)
    vad = EnergyVAD(rate=RATE, window_ms=200)  # ten 20 ms frames
    levels: list[float] = []
    for dbfs in np.concatenate([rng.uniform(-70, -20, 200), np.full(30, -50.0)]):
        frame = _noise(20, dbfs=float(dbfs), seed=len(levels))
        levels.append(frame_level_dbfs(frame))
        vad.is_speech(frame)
        assert abs(vad.noise_floor_dbfs - min(levels[-10:])) < 1e-9


def test_the_noise_floor_window_spans_the_same_time_with_40_ms_frames() -> None:
    rng = np.random.default_rng(11)
    vad = EnergyVAD(rate=RATE, window_ms=200)  # five 40 ms frames
    levels: list[float] = []
    for dbfs in rng.uniform(-70, -20, 120):
        frame = _noise(40, dbfs=float(dbfs), seed=len(levels))
        levels.append(frame_level_dbfs(frame))
        vad.is_speech(frame)
        assert abs(vad.noise_floor_dbfs - min(levels[-5:])) < 1e-9


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_speech_through_the_phone_path() -> None:
    from gateway.demo.simulated_twilio import espeak_mulaw

    speech = ulaw_decode(espeak_mulaw("What are your opening hours?"))
    pcm = np.concatenate([_noise(800), speech, _noise(1500, seed=5)])
    events = _run(Endpointer(rate=RATE), pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    assert 700 <= started.at_ms <= 1100
    assert ended.at_ms - started.at_ms > 1000
