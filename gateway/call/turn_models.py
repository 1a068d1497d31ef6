"""Loading the process's turn models (Silero VAD, Smart Turn) once, at start-up, from the
files the install put in the cache: missing or corrupt files stop start-up with a message
that says how to install them; nothing is fetched at run time."""

from __future__ import annotations

import logging
from pathlib import Path

from audio.models import locate_models
from audio.silero import SileroModel
from audio.smart_turn import SmartTurnModel
from gateway.call.config import TurnModels

log = logging.getLogger(__name__)


def load_turn_models(directory: Path) -> TurnModels:
    """Both models from `directory` (any assistant may choose either); `ModelMissing` if a
    file is absent or fails its hash check."""
    paths = locate_models(directory)
    silero = SileroModel.load(paths.silero)
    smart_turn = SmartTurnModel.load(paths.smart_turn)
    log.info("turn models loaded", extra={"directory": str(directory)})
    return TurnModels(vad=silero.stream, judge=smart_turn.completion_probability)
