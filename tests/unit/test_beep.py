"""The beep detector: steady tones in the beep band are found (after a mu-law round trip, at
8, 16 and 48 kHz, in line noise, wherever they start), with their span and frequency;
speech (espeak-ng voices and Festival), noise, short blips, dual tones and tones outside
the band are not."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from audio.beep import Beep, BeepDetector
from audio.codec import ulaw_decode, ulaw_encode
from tests.espeak import festival_speak, needs_espeak, needs_festival, speak

PCM = npt.NDArray[np.int16]


def _tone(rate: int, hz: float | tuple[float, ...], ms: float, *, dbfs: float = -12.0) -> PCM:
    t = np.arange(int(rate * ms / 1000)) / rate
    freqs = (hz,) if isinstance(hz, float | int) else hz
    wave = np.sum([np.sin(2 * np.pi * f * t) for f in freqs], axis=0) / len(freqs)
    out: PCM = (wave * 32767 * 10 ** (dbfs / 20) * np.sqrt(2)).astype(np.int16)
    return out


def _silence(rate: int, ms: float) -> PCM:
    return np.zeros(int(rate * ms / 1000), dtype=np.int16)


def _noise(rate: int, ms: float, *, dbfs: float, seed: int = 1) -> PCM:
    rng = np.random.default_rng(seed)
    level = 32768 * 10 ** (dbfs / 20)
    return (rng.standard_normal(int(rate * ms / 1000)) * level).astype(np.int16)


def _mulaw(pcm: PCM) -> PCM:
    return ulaw_decode(ulaw_encode(pcm))


def _beeps(pcm: PCM, rate: int, *, frame_ms: int = 20) -> list[Beep]:
    detector = BeepDetector(rate)
    frame = rate * frame_ms // 1000
    found: list[Beep] = []
    for start in range(0, pcm.size, frame):
        found += detector.feed(pcm[start : start + frame])
    return found


@pytest.mark.parametrize("hz", [440.0, 1000.0, 1400.0, 2100.0, 2450.0])
def test_a_beep_after_a_mulaw_round_trip_is_found_with_its_span_and_frequency(hz: float) -> None:
    pcm = np.concatenate([_silence(8000, 500), _tone(8000, hz, 300), _silence(8000, 500)])
    [beep] = _beeps(_mulaw(pcm), 8000)
    assert abs(beep.frequency_hz - hz) < 15
    assert 480 <= beep.start_ms <= 520
    assert 780 <= beep.end_ms <= 820


@pytest.mark.parametrize("rate", [16000, 48000])
def test_a_beep_is_found_at_wideband_rates(rate: int) -> None:
    pcm = np.concatenate([_silence(rate, 200), _tone(rate, 1000.0, 400), _silence(rate, 200)])
    [beep] = _beeps(pcm, rate)
    assert abs(beep.duration_ms - 400) <= 40


@pytest.mark.parametrize("offset_ms", [0.0, 3.0, 7.5, 11.0, 19.0])
def test_a_150_ms_beep_is_found_wherever_it_falls_in_the_blocks(offset_ms: float) -> None:
    pcm = np.concatenate([_silence(8000, 100 + offset_ms), _tone(8000, 1000.0, 150)])
    pcm = np.concatenate([pcm, _silence(8000, 300)])
    assert len(_beeps(_mulaw(pcm), 8000)) == 1


def test_a_beep_in_line_noise_and_frames_of_any_size() -> None:
    tone = np.concatenate([_silence(8000, 300), _tone(8000, 850.0, 500), _silence(8000, 300)])
    line = _noise(8000, tone.size * 1000 / 8000, dbfs=-45)
    pcm = _mulaw((tone.astype(np.int32) + line).clip(-32768, 32767).astype(np.int16))
    assert len(_beeps(pcm, 8000, frame_ms=20)) == 1
    assert _beeps(pcm, 8000, frame_ms=7) == _beeps(pcm, 8000, frame_ms=20)


def test_the_beep_is_reported_when_it_stops_and_toning_says_it_is_under_way() -> None:
    detector = BeepDetector(8000)
    tone = _tone(8000, 1000.0, 600)
    heard: list[Beep] = []
    toning = []
    for start in range(0, tone.size, 160):
        heard += detector.feed(tone[start : start + 160])
        toning.append(detector.toning)
    assert heard == [] and all(toning)
    [beep] = detector.feed(_silence(8000, 20))
    assert beep.end_ms == 600.0 and not detector.toning


def test_a_tone_that_does_not_stop_is_reported_once_at_its_maximum_length() -> None:
    pcm = _tone(8000, 1000.0, 5000)
    [beep] = _beeps(pcm, 8000)
    assert beep.duration_ms == 2000.0


@pytest.mark.parametrize(
    "signal",
    [
        "blip",
        "dual tone",
        "low tone",
        "high tone",
        "noise",
        "quiet tone",
        "gliding tone",
    ],
)
def test_what_is_not_a_beep(signal: str) -> None:
    rate = 8000
    pcm = {
        "blip": _tone(rate, 1000.0, 80),
        "dual tone": _tone(rate, (697.0, 1209.0), 500),  # a DTMF key
        "low tone": _tone(rate, 200.0, 500),
        "high tone": _tone(rate, 3200.0, 500),
        "noise": _noise(rate, 2000, dbfs=-20),
        "quiet tone": _tone(rate, 1000.0, 500, dbfs=-55),
    }.get(signal)
    if signal == "gliding tone":  # a chirp: 500 -> 2000 Hz in 500 ms, as a swept whistle
        t = np.arange(4000) / rate
        pcm = (8000 * np.sin(2 * np.pi * (500 * t + 1500 * t**2))).astype(np.int16)
    assert pcm is not None
    framed = np.concatenate([_silence(rate, 200), pcm, _silence(rate, 200)])
    assert _beeps(_mulaw(framed), rate) == []


SPEECH = [
    "Hello?",
    "Hi, this is Sam speaking.",
    "Hello, who is this?",
    "Hi, you have reached the voicemail of Sam. I cannot take your call right now. "
    "Please leave a message after the tone.",
    "Ooooooh. Eeeeeeee. Aaaaaah. Mmmmmmmm.",
]


@needs_espeak
@pytest.mark.parametrize("voice", ["en-us", "en-us+f3", "en-gb", "en-us+m7"])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_espeak_speech_is_not_a_beep(voice: str, rate: int) -> None:
    for text in SPEECH:
        pcm = speak(text, rate, voice=voice, pitch=70 if "f" in voice else None)
        assert _beeps(_mulaw(pcm) if rate == 8000 else pcm, rate) == [], text


@needs_festival
def test_festival_speech_is_not_a_beep() -> None:
    for text in SPEECH:
        pcm = festival_speak(text, 8000)
        assert pcm.size > 4000
        assert _beeps(_mulaw(pcm), 8000) == [], text


@needs_espeak
def test_a_beep_right_after_speech_is_found() -> None:
    greeting = speak("Please leave a message after the tone.", 8000)
    pcm = np.concatenate([greeting, _tone(8000, 1000.0, 250), _silence(8000, 400)])
    [beep] = _beeps(_mulaw(pcm), 8000)
    start_ms = greeting.size / 8
    assert abs(beep.start_ms - start_ms) <= 20 and abs(beep.duration_ms - 250) <= 40


def test_a_rate_too_low_for_the_band_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        BeepDetector(4000)
