"""The streaming resampler: chunked == one-shot, low hold-back, no aliasing or imaging."""

import numpy as np
import pytest

from audio.resample import StreamResampler

PATHS = [
    (8000, 16000),
    (16000, 8000),
    (24000, 8000),
    (48000, 16000),
    (16000, 48000),
    (22050, 8000),
    (22050, 16000),
]


def _chunked(resampler: StreamResampler, x: np.ndarray, chunk: int) -> np.ndarray:
    parts = [resampler.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    parts.append(resampler.flush())
    return np.concatenate(parts)


def _tone(rate: int, freq: float, seconds: float = 1.0, amplitude: float = 16000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def _tone_db(y: np.ndarray, rate: int, freq: float) -> float:
    """Level of `freq` in `y` (Hann-windowed FFT peak near the bin), in dB."""
    y = y[len(y) // 4 : -len(y) // 4].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    bins = np.fft.rfftfreq(len(y), 1 / rate)
    near = np.abs(bins - freq) <= 3 * rate / len(y)
    return 20 * np.log10(spectrum[near].max() + 1e-12)


@pytest.mark.parametrize(("in_rate", "out_rate"), PATHS)
def test_streaming_over_20ms_chunks_equals_one_shot(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(in_rate) * 4000).astype(np.int16)
    one_shot = StreamResampler(in_rate, out_rate)
    whole = np.concatenate([one_shot.process(x), one_shot.flush()])
    streamed = _chunked(StreamResampler(in_rate, out_rate), x, in_rate // 50)
    assert len(whole) == len(streamed) == round(len(x) * out_rate / in_rate)
    diff = np.sqrt(np.mean((streamed.astype(float) - whole) ** 2))
    assert diff / np.sqrt(np.mean(whole.astype(float) ** 2)) < 1e-3


@pytest.mark.parametrize(("in_rate", "out_rate"), PATHS)
def test_holds_back_less_than_5_ms(in_rate: int, out_rate: int) -> None:
    resampler = StreamResampler(in_rate, out_rate)
    assert resampler.delay_ms < 5.0
    chunk = in_rate // 50
    x = np.zeros(chunk * 50, dtype=np.int16)
    held = []
    emitted = 0
    for i in range(0, len(x), chunk):
        emitted += len(resampler.process(x[i : i + chunk]))
        ideal = (i + chunk) * out_rate / in_rate
        held.append((ideal - emitted) / out_rate * 1000)
    assert max(held) < 5.0
    assert resampler.held_samples / in_rate * 1000 < 5.0


@pytest.mark.parametrize(("in_rate", "out_rate"), PATHS)
def test_output_is_time_aligned_with_input(in_rate: int, out_rate: int) -> None:
    # A 300 Hz tone keeps its phase: the filter delay is compensated.
    x = _tone(in_rate, 300.0)
    resampler = StreamResampler(in_rate, out_rate)
    y = np.concatenate([resampler.process(x), resampler.flush()]).astype(float)
    expected = _tone(out_rate, 300.0)
    middle = slice(out_rate // 4, -out_rate // 4)
    error = np.sqrt(np.mean((y[middle] - expected[middle]) ** 2)) / 16000
    assert error < 1e-3


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "probe_hz", "alias_hz"),
    [
        (24000, 8000, 5000.0, 3000.0),  # folds to 3 kHz
        (16000, 8000, 4600.0, 3400.0),
        (48000, 16000, 10000.0, 6000.0),
        (22050, 8000, 6000.0, 2000.0),
        (22050, 16000, 9000.0, 7000.0),
    ],
)
def test_aliasing_is_below_minus_80_db(
    in_rate: int, out_rate: int, probe_hz: float, alias_hz: float
) -> None:
    reference = StreamResampler(in_rate, out_rate).process(_tone(in_rate, 1000.0))
    probe = StreamResampler(in_rate, out_rate).process(_tone(in_rate, probe_hz))
    # Float-domain measurement: int16 rounding alone sits near -100 dB.
    assert _tone_db(probe, out_rate, alias_hz) - _tone_db(reference, out_rate, 1000.0) < -80


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (16000, 48000), (8000, 48000)])
def test_imaging_is_below_minus_80_db(in_rate: int, out_rate: int) -> None:
    y = StreamResampler(in_rate, out_rate).process(_tone(in_rate, 1000.0))
    image_hz = in_rate - 1000.0
    assert _tone_db(y, out_rate, image_hz) - _tone_db(y, out_rate, 1000.0) < -80


@pytest.mark.parametrize("freq", [1000.0, 1234.5])
def test_round_trip_8k_16k_8k_keeps_a_tone_above_60_db_snr(freq: float) -> None:
    x = _tone(8000, freq, seconds=2.0).astype(np.int16)
    up, down = StreamResampler(8000, 16000), StreamResampler(16000, 8000)
    mid = _chunked(up, x, 160)
    back = _chunked(down, mid, 320).astype(float)
    assert len(back) == len(x)
    middle = slice(800, -800)
    noise = back[middle] - x[middle]
    snr = 10 * np.log10(np.mean(x[middle].astype(float) ** 2) / (np.mean(noise**2) + 1e-12))
    assert snr >= 60


def test_passband_is_flat() -> None:
    for freq in (300.0, 1000.0, 3000.0):
        y = StreamResampler(24000, 8000).process(_tone(24000, freq))
        rms = np.sqrt(np.mean(y[2000:-2000].astype(float) ** 2))
        assert abs(20 * np.log10(rms / (16000 / np.sqrt(2)))) < 0.1


def test_flush_releases_held_samples_and_resets() -> None:
    resampler = StreamResampler(22050, 8000)
    x = _tone(22050, 440.0, seconds=0.1)
    out = resampler.process(x)
    held = resampler.held_samples
    assert held > 0
    tail = resampler.flush()
    assert len(out) + len(tail) == round(len(x) * 8000 / 22050)
    assert resampler.held_samples == 0
    again = np.concatenate([resampler.process(x), resampler.flush()])
    assert np.array_equal(again, np.concatenate([out, tail]))


def test_identity_passes_through() -> None:
    x = np.arange(100, dtype=np.int16)
    resampler = StreamResampler(8000, 8000)
    assert np.array_equal(resampler.process(x), x)
    assert resampler.delay_ms == 0
