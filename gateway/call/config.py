"""What shapes every call's session in this process: the turn-taking of calls without an
assistant, the loaded turn models, and the agent's bounds (built once, from settings)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from audio.vad import FrameClassifier
from storage import TurnTakingConfig


@dataclass(frozen=True, slots=True)
class TurnModels:
    """The process's turn models, loaded once at start (None: not loaded, so the energy VAD
    and a fixed silence stand in)."""

    # A neural VAD for one stream at a sample rate.
    vad: Callable[[int], FrameClassifier] | None = None
    # The probability that a turn (16 kHz audio) is complete; thread-safe, run off the loop
    # on `executor` (its own threads: not the loop's default executor, shared with DNS).
    judge: Callable[[npt.NDArray[np.int16]], float] | None = None
    executor: Executor | None = None
    # log10 P(a sentence ends after these English words) (None: no words).
    sentence_end: Callable[[str], float | None] | None = None


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How the session takes turns and bounds the agent (one per process, from settings)."""

    # Turn-taking of calls without an assistant (an assistant brings its own).
    turn: TurnTakingConfig = field(default_factory=TurnTakingConfig)
    models: TurnModels = field(default_factory=TurnModels)
    # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT.
    preroll_ms: int = 300
    apology: str = "Sorry, I am having trouble right now. Could you say that again?"
    # Bounds on the agent: no first token / no audio within these ends the attempt.
    llm_first_token_timeout_s: float = 8.0
    tts_first_audio_timeout_s: float = 5.0
    # A goodbye said before the call ends for the gateway's own reasons is bounded by this.
    goodbye_timeout_s: float = 15.0
