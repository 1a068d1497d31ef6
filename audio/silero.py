"""Silero VAD v5 on one call's stream: one ONNX session per process (`SileroModel`), one
stateful `SileroVAD` per stream that buffers 20 ms frames into the model's native chunks.

Silero's streaming contract (from its reference ONNX wrapper): each chunk of 256 samples at
8 kHz or 512 at 16 kHz goes in with the previous 32 / 64 samples prepended as context, the
recurrent state comes back as `stateN` and goes into the next call, and `sr` names the rate.
Synchronous CPU work, measured in bench/vad_bench.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from audio.models import SILERO_SHA256, check_model

# rate -> (samples per chunk, samples of context before it)
_CHUNKING = {8000: (256, 32), 16000: (512, 64)}
_STATE_SHAPE = (2, 1, 128)
_FULL_SCALE = 32768.0
# Gated chunks (8 x 32 ms) after which the recurrent state is cleared. The model never saw
# them, so its state still describes the audio before the gap: across a pause between
# words that helps (clearing at once lost ~6 % of espeak speech frames), after a longer
# quiet the next speech starts from a fresh state, as at the start of a stream.
_RESET_AFTER_GATED = 8


class ChunkClassifier(Protocol):
    """What a `SileroVAD` runs per chunk: `SileroModel` (or a scripted stand-in in tests)."""

    def infer(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32], rate: int
    ) -> tuple[float, npt.NDArray[np.float32]]: ...


class SileroModel:
    """The Silero VAD network; load once per process and share it by every call."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._rates = {rate: np.array(rate, dtype=np.int64) for rate in _CHUNKING}

    @classmethod
    def load(cls, path: Path) -> SileroModel:
        """Load the model at `path` after checking its hash (`ModelMissing` if absent or bad)."""
        check_model(path, SILERO_SHA256)
        options = ort.SessionOptions()
        # Many calls share one process: each inference stays on the thread that asks for it.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return cls(session)

    def stream(
        self,
        rate: int,
        *,
        threshold: float = 0.5,
        release: float = 0.35,
        gate_dbfs: float | None = -60.0,
    ) -> SileroVAD:
        """A detector for one stream at `rate` (8000 or 16000)."""
        return SileroVAD(self, rate, threshold=threshold, release=release, gate_dbfs=gate_dbfs)

    def infer(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32], rate: int
    ) -> tuple[float, npt.NDArray[np.float32]]:
        """Speech probability of one context+chunk window, shape [1, n], and the next state."""
        output, next_state = self._session.run(
            None, {"input": window, "state": state, "sr": self._rates[rate]}
        )
        return float(output[0, 0]), next_state


class SileroVAD:
    """Speech / not speech per frame for one stream, with hysteresis.

    Feed every frame in order with `is_speech()` (any size; 20 ms in the gateway). Samples
    are buffered to whole chunks; the decision changes only when a chunk completes: speech
    from a chunk whose probability reaches `threshold` until one falls below `release`.
    A chunk quieter than `gate_dbfs` (RMS) skips the model and counts as probability 0 (a
    quiet line costs almost nothing); a run of them also clears the recurrent state.
    `gate_dbfs=None` runs the model on every chunk.
    """

    def __init__(
        self,
        model: ChunkClassifier,
        rate: int,
        *,
        threshold: float = 0.5,
        release: float = 0.35,
        gate_dbfs: float | None = -60.0,
    ) -> None:
        if rate not in _CHUNKING:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {rate}")
        if not 0.0 <= release <= threshold <= 1.0:
            raise ValueError("need 0 <= release <= threshold <= 1")
        self._model = model
        self._rate = rate
        self._chunk, self._context = _CHUNKING[rate]
        self._threshold = threshold
        self._release = release
        # Mean square of float samples in [-1, 1) at the gate level.
        self._gate_power = None if gate_dbfs is None else 10.0 ** (gate_dbfs / 10.0)
        # [context | chunk being filled]: the model's input once the chunk is full.
        self._window = np.zeros((1, self._context + self._chunk), dtype=np.float32)
        self._filled = 0
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._speaking = False
        self._gated = 0
        self.probability = 0.0
        self.chunks_run = 0  # model inferences so far (the gate skips the rest)

    def is_speech(self, pcm: npt.NDArray[np.int16]) -> bool:
        """Take the next frame of the stream; return the current decision."""
        samples = pcm.astype(np.float32) / np.float32(_FULL_SCALE)
        start = 0
        while start < samples.size:
            take = min(self._chunk - self._filled, samples.size - start)
            at = self._context + self._filled
            self._window[0, at : at + take] = samples[start : start + take]
            self._filled += take
            start += take
            if self._filled == self._chunk:
                self._classify_chunk()
        return self._speaking

    def reset(self) -> None:
        """Forget the stream so far (state, context, buffered samples, decision)."""
        self._window[:] = 0.0
        self._filled = 0
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._speaking = False
        self._gated = 0
        self.probability = 0.0

    def _classify_chunk(self) -> None:
        chunk = self._window[0, self._context :]
        if self._gate_power is not None and float(np.dot(chunk, chunk)) < (
            self._gate_power * self._chunk
        ):
            self.probability = 0.0
            self._gated += 1
            if self._gated == _RESET_AFTER_GATED:
                self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        else:
            self._gated = 0
            self.probability, self._state = self._model.infer(self._window, self._state, self._rate)
            self.chunks_run += 1
        if self._speaking:
            self._speaking = self.probability >= self._release
        else:
            self._speaking = self.probability >= self._threshold
        # The chunk's tail is the next chunk's context.
        self._window[0, : self._context] = self._window[0, -self._context :]
        self._filled = 0
