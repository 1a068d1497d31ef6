"""Smart Turn v3.2: Whisper log-mel features of the right shape and scale, the 8 s window,
espeak-ng turns judged complete or not, thread safety, and a missing or corrupt model."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest

from audio.models import SMART_TURN_FILE, ModelMissing
from audio.smart_turn import SmartTurnModel, fit_to_window, log_mel, mel_filters
from gateway.settings import Settings
from tests.espeak import needs_espeak, speak

RATE = 16000
PAUSE = np.zeros(RATE // 5, dtype=np.int16)  # 200 ms: about when a turn is judged


@pytest.fixture(scope="module")
def model() -> SmartTurnModel:
    # Installed by scripts/dev.sh (scripts/ensure-models.sh) before the tests run.
    return SmartTurnModel.load(Settings().turn_models_dir / SMART_TURN_FILE)


def test_the_window_is_the_last_eight_seconds_padded_at_the_start() -> None:
    short = np.full(RATE, 16384, dtype=np.int16)
    window = fit_to_window(short)
    assert window.shape == (8 * RATE,)
    assert not window[: 7 * RATE].any() and (window[7 * RATE :] == 0.5).all()
    long = np.arange(10 * RATE, dtype=np.int64).astype(np.int16)
    np.testing.assert_array_equal(fit_to_window(long), long[-8 * RATE :] / np.float32(32768))


def test_features_have_whisper_shape_and_scale() -> None:
    t = np.arange(8 * RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    features = log_mel(tone)
    assert features.shape == (80, 800) and features.dtype == np.float32
    # Clamped to 8 decades below the peak, then (x + 4) / 4: a range of exactly 2.
    assert features.max() - features.min() == pytest.approx(2.0, abs=1e-5)
    peak_band = int(np.argmax(features[:, 400]))
    centres = np.argmax(mel_filters(), axis=1) * RATE / 400  # Hz at each filter's peak bin
    assert abs(centres[peak_band] - 1000) < 60
    with pytest.raises(ValueError):
        log_mel(tone[:-1])


def test_mel_filters_are_slaney_normalised() -> None:
    filters = mel_filters()
    assert filters.shape == (80, 201)
    # Unit-area triangles (height 2 / base width in Hz), sampled at 40 Hz bins: where a
    # filter is about two bins wide the sampled area strays by up to 8 %.
    areas = filters.sum(axis=1) * RATE / 400
    assert np.all(np.abs(areas - 1.0) < 0.1)
    assert np.median(np.abs(areas - 1.0)) < 0.01


@needs_espeak
def test_a_complete_question_against_a_cut_sentence(model: SmartTurnModel) -> None:
    complete = model.completion_probability(
        np.concatenate([speak("What time do you open tomorrow?", RATE), PAUSE])
    )
    cut = model.completion_probability(
        np.concatenate([speak("I would like to book a", RATE), PAUSE])
    )
    assert complete > 0.9
    assert cut < 0.2


def test_only_the_last_eight_seconds_count(model: SmartTurnModel) -> None:
    rng = np.random.default_rng(0)
    tail = (rng.standard_normal(8 * RATE) * 2000).astype(np.int16)
    before = (rng.standard_normal(3 * RATE) * 8000).astype(np.int16)
    assert model.completion_probability(np.concatenate([before, tail])) == pytest.approx(
        model.completion_probability(tail), abs=1e-6
    )
    assert 0.0 <= model.completion_probability(np.zeros(0, dtype=np.int16)) <= 1.0


@needs_espeak
def test_threads_share_one_model(model: SmartTurnModel) -> None:
    turns = [speak(text, RATE) for text in ("Thank you.", "I was going to", "Yes please.")]
    alone = [model.completion_probability(turn) for turn in turns]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(model.completion_probability, turns * 3))
    np.testing.assert_allclose(together, alone * 3, atol=1e-6)


def test_a_missing_or_corrupt_file_is_model_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match=r"ensure-models\.sh"):
        SmartTurnModel.load(tmp_path / SMART_TURN_FILE)
    corrupt = tmp_path / SMART_TURN_FILE
    corrupt.write_bytes(b"\0" * 1024)
    with pytest.raises(ModelMissing, match="hash check"):
        SmartTurnModel.load(corrupt)
