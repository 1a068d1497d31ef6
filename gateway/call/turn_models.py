"""Loading the process's turn models (Silero VAD, Smart Turn) once, at start-up, from the
files the install put in the cache: missing or corrupt files stop start-up with a message
that says how to install them; nothing is fetched at run time."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from audio.models import SILERO_FILE, SMART_TURN_FILE
from audio.silero import SileroModel
from audio.smart_turn import SmartTurnModel
from gateway.call.config import TurnModels
from gateway.call.sentence_end import SentenceEnds

log = logging.getLogger(__name__)


def load_turn_models(directory: Path) -> TurnModels:
    """The VAD and the turn model from `directory` (any assistant may choose either) and the
    sentence-end model of the pocketsphinx package; `ModelMissing` if a file is absent or
    fails its hash check."""
    silero = SileroModel.load(directory / SILERO_FILE)  # each load checks its file's hash
    smart_turn = SmartTurnModel.load(directory / SMART_TURN_FILE)
    log.info("turn models loaded", extra={"directory": str(directory)})
    sentences = SentenceEnds.load()
    # One inference per core at most; more queue (a slow verdict falls back to the longest
    # wait, it never holds a turn forever).
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="turn-model")
    return TurnModels(
        vad=silero.stream,
        judge=smart_turn.completion_probability,
        executor=executor,
        sentence_end=sentences.end_log10,
    )
