"""Silero VAD per stream: speech against silence and noise at 8 and 16 kHz, the same answer
whatever the framing (context and state carried across frames), and the endpointer on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from audio.models import SILERO_FILE, ModelMissing
from audio.silero import SileroModel, SileroVAD
from audio.vad import Endpointer, SpeechEnded, SpeechStarted
from gateway.settings import Settings
from tests.espeak import needs_espeak, speak, speech_span

SENTENCE = "Hello, I would like to book a table for two people tomorrow evening."


@pytest.fixture(scope="module")
def model() -> SileroModel:
    # Installed by scripts/dev.sh (scripts/ensure-models.sh) before the tests run.
    return SileroModel.load(Settings().turn_models_dir / SILERO_FILE)


def _decisions(vad: SileroVAD, pcm: npt.NDArray[np.int16], frame: int) -> list[bool]:
    return [vad.is_speech(pcm[i : i + frame]) for i in range(0, pcm.size - frame + 1, frame)]


def _noise(rate: int, seconds: float, dbfs: float, seed: int = 0) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    sigma = 32768 * 10 ** (dbfs / 20)
    return (rng.standard_normal(int(rate * seconds)) * sigma).astype(np.int16)


@needs_espeak
@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_is_speech_and_silence_and_noise_are_not(model: SileroModel, rate: int) -> None:
    frame = rate // 50
    speech = speak(SENTENCE, rate)
    start, end = speech_span(speech)
    line = _noise(rate, 1.0, -70.0)  # a quiet line under the speech: gaps are not digital zero
    pcm = np.concatenate([line, speech + _noise(rate, speech.size / rate, -70.0, seed=1), line])
    decisions = _decisions(model.stream(rate), pcm, frame)
    first, last = (line.size + start) // frame, (line.size + end) // frame
    assert not any(decisions[: first - 1])
    assert np.mean(decisions[first:last]) > 0.7
    assert not any(decisions[last + 15 :])  # released within 300 ms of the last word

    for gate in (-60.0, None):
        silence = np.zeros(rate * 3, dtype=np.int16)
        assert not any(_decisions(model.stream(rate, gate_dbfs=gate), silence, frame))
    white = _noise(rate, 3.0, -20.0, seed=2)
    assert np.mean(_decisions(model.stream(rate), white, frame)) < 0.05


def test_the_gate_skips_the_model_on_a_quiet_line(model: SileroModel) -> None:
    vad = model.stream(8000)
    _decisions(vad, _noise(8000, 1.0, -75.0), 160)
    assert vad.chunks_run == 0 and vad.probability == 0.0
    ungated = model.stream(8000, gate_dbfs=None)
    _decisions(ungated, _noise(8000, 1.0, -75.0), 160)
    assert ungated.chunks_run == 8000 // 256


@needs_espeak
@pytest.mark.parametrize("rate", [8000, 16000])
def test_framing_does_not_change_the_answer(model: SileroModel, rate: int) -> None:
    pcm = np.concatenate([speak(SENTENCE, rate), np.zeros(rate // 2, dtype=np.int16)])
    chunk = 256 if rate == 8000 else 512
    pcm = pcm[: pcm.size - pcm.size % chunk]

    def per_chunk(frame: int) -> list[float]:
        vad = model.stream(rate, gate_dbfs=None)
        probabilities: list[float] = []
        for i in range(0, pcm.size, frame):
            before = vad.chunks_run
            vad.is_speech(pcm[i : i + frame])
            if vad.chunks_run != before:
                assert vad.chunks_run == before + 1  # frames shorter than a chunk
                probabilities.append(vad.probability)
        return probabilities

    native = per_chunk(chunk)
    assert len(native) == pcm.size // chunk
    assert max(native) > 0.9
    np.testing.assert_allclose(per_chunk(rate // 50), native, atol=1e-5)  # 20 ms frames
    np.testing.assert_allclose(per_chunk(rate // 100 - 3), native, atol=1e-5)
    whole = model.stream(rate, gate_dbfs=None)
    whole.is_speech(pcm)
    assert whole.chunks_run == len(native)
    assert whole.probability == pytest.approx(native[-1], abs=1e-5)

    # The carried state matters: fresh streams per chunk answer differently.
    fresh = []
    for i in range(0, pcm.size, chunk):
        vad = model.stream(rate, gate_dbfs=None)
        vad.is_speech(pcm[i : i + chunk])
        fresh.append(vad.probability)
    assert np.max(np.abs(np.array(fresh) - np.array(native))) > 0.1


def test_hysteresis_holds_speech_between_threshold_and_release() -> None:
    scripted = _Scripted([0.6, 0.4, 0.36, 0.34, 0.45, 0.5])
    vad = SileroVAD(scripted, 16000, threshold=0.5, release=0.35)
    chunk = np.full(512, 1000, dtype=np.int16)
    assert [vad.is_speech(chunk) for _ in range(6)] == [True, True, True, False, False, True]


class _Scripted:
    """Stands in for the network with a fixed sequence of probabilities."""

    def __init__(self, probabilities: list[float]) -> None:
        self._probabilities = iter(probabilities)

    def infer(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32], rate: int
    ) -> tuple[float, npt.NDArray[np.float32]]:
        assert window.shape == (1, 64 + 512)
        return next(self._probabilities), state


@needs_espeak
def test_the_endpointer_runs_on_silero(model: SileroModel) -> None:
    rate, frame = 8000, 160
    speech = speak(SENTENCE, rate)
    start, end = speech_span(speech)
    pcm = np.concatenate([np.zeros(rate, np.int16), speech, np.zeros(rate * 2, np.int16)])
    endpointer = Endpointer(rate=rate, silence_ms=600, vad=model.stream(rate))
    events = [e for i in range(0, pcm.size, frame) for e in endpointer.feed(pcm[i : i + frame])]
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].at_ms - 1000 * (rate + start) / rate) < 100
    assert abs(events[1].at_ms - 1000 * (rate + end) / rate) < 150


def test_rates_and_thresholds_are_checked(model: SileroModel) -> None:
    with pytest.raises(ValueError):
        model.stream(44100)
    with pytest.raises(ValueError):
        model.stream(8000, threshold=0.3, release=0.5)


def test_a_missing_or_corrupt_file_is_model_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match=r"ensure-models\.sh"):
        SileroModel.load(tmp_path / SILERO_FILE)
    corrupt = tmp_path / SILERO_FILE
    corrupt.write_bytes(b"not an onnx model")
    with pytest.raises(ModelMissing, match="hash check"):
        SileroModel.load(corrupt)
