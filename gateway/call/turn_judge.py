"""The judgement of a pause in the caller's turn: does it sound complete (the audio turn
model, off the event loop) and does it read complete (the words so far end a sentence)?
Both yes: the turn ends after the short wait; both no: after the long one; a disagreement
in between. Without the words (a recogniser that does not stream them, a language other
than English) a turn that sounds complete waits the in-between wait: measured on the turn
corpus, the audio model alone takes 40-70 % of mid-sentence pauses for complete ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from gateway.call.config import TurnModels
from gateway.metrics import GatewayMetrics
from storage import TurnTakingConfig

log = logging.getLogger(__name__)


class TurnJudge:
    """Judges the pauses of one call's caller."""

    def __init__(
        self,
        turn: TurnTakingConfig,
        models: TurnModels,
        *,
        english: bool,
        metrics: GatewayMetrics | None,
    ) -> None:
        self._judge = models.judge if turn.end_of_turn == "smart-turn" else None
        self._executor = models.executor
        self._sentence_end = models.sentence_end if turn.transcript_check and english else None
        self._waits = (turn.complete_wait_ms, turn.unsure_wait_ms, turn.incomplete_wait_ms)
        self._sounds_threshold = turn.smart_turn_threshold
        self._reads_threshold = turn.sentence_end_threshold
        self._metrics = metrics

    @property
    def judges(self) -> bool:
        """False: no turn model is loaded or chosen (a fixed silence ends turns)."""
        return self._judge is not None

    def reads_words(self, live: bool) -> bool:
        """True if the words so far count: English, asked for, and from a recogniser that
        streams them (`live`; a decode at every pause is too slow and rough to help)."""
        return self._sentence_end is not None and live

    async def judge(
        self, audio: npt.NDArray[np.int16], words: Callable[[], Awaitable[str | None]]
    ) -> tuple[bool, float] | None:
        """Whether the paused turn in `audio` sounds complete, and the silence it should
        wait for given the words so far; None if the model failed (the turn then ends after
        the longest wait)."""
        assert self._judge is not None
        loop = asyncio.get_running_loop()
        try:
            probability = await loop.run_in_executor(self._executor, self._judge, audio)
        except Exception:  # a failing model must not stall the turn
            log.exception("the turn model failed; the turn ends after the longest wait")
            return None
        text = await words()  # after the model: the words that came meanwhile count too
        sounds = probability >= self._sounds_threshold
        reads = self._reads(text)
        wait_ms = self._wait(sounds, reads)
        log.debug(
            "turn judged",
            extra={"probability": round(probability, 3), "words": text, "wait_ms": wait_ms},
        )
        if self._metrics is not None:
            self._metrics.turns_judged_total += 1
            self._metrics.turns_judged_complete_total += int(sounds and bool(reads))
        return sounds, wait_ms

    def wait_ms(self, sounds: bool, text: str | None) -> float:
        """The wait of a pause that `sounds` complete (or not) with `text` so far (None: the
        words are not known). Called again when more words arrive during the pause (a
        streaming recogniser's words lag the audio by a few hundred ms)."""
        return self._wait(sounds, self._reads(text))

    def _reads(self, text: str | None) -> bool | None:
        """Whether `text` reads as a finished sentence (None: no words, or not read)."""
        score = self._sentence_end(text) if self._sentence_end and text is not None else None
        return None if score is None else score >= self._reads_threshold

    def _wait(self, sounds: bool, reads: bool | None) -> float:
        complete_wait, unsure_wait, incomplete_wait = self._waits
        if not sounds:
            return unsure_wait if reads else incomplete_wait
        if reads is None:
            return unsure_wait  # the audio alone is not trusted to end a turn early
        return complete_wait if reads else unsure_wait
