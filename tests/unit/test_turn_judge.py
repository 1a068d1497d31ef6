"""The judgement of a pause: the audio model's probability and the words so far pick the
wait, and without the words a turn that sounds complete is not ended early."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.call.config import TurnModels
from gateway.call.turn_judge import TurnJudge
from gateway.metrics import GatewayMetrics
from storage import TurnTakingConfig

TURN = TurnTakingConfig(
    complete_wait_ms=200, unsure_wait_ms=1200, incomplete_wait_ms=1500, smart_turn_threshold=0.9
)
FINISHED, UNFINISHED = -0.5, -2.0  # log10 P(sentence end) of words that read finished / not


def _judge(probability: float, *, english: bool = True, **turn: object) -> TurnJudge:
    models = TurnModels(
        judge=lambda audio: probability,
        executor=ThreadPoolExecutor(max_workers=1),
        sentence_end=lambda text: {"finished": FINISHED, "unfinished": UNFINISHED}.get(text),
    )
    config = TURN.model_copy(update=turn)
    return TurnJudge(config, models, english=english, metrics=GatewayMetrics())


async def _wait(judge: TurnJudge, words: str | None) -> float | None:
    async def so_far() -> str | None:
        return words

    verdict = await judge.judge(np.zeros(16000, dtype=np.int16), so_far)
    return None if verdict is None else verdict[1]


@pytest.mark.parametrize(
    ("probability", "words", "wait_ms"),
    [
        (0.95, "finished", 200),  # sounds and reads complete: the short wait
        (0.95, "unfinished", 1200),  # they disagree
        (0.50, "finished", 1200),  # they disagree (0.5 is under the 0.9 threshold)
        (0.50, "unfinished", 1500),  # neither: the long wait
        (0.95, None, 1200),  # no words: the audio alone does not end a turn early
        (0.50, None, 1500),
        (0.95, "", 1200),  # no words heard yet
    ],
)
async def test_the_wait_follows_both_judgements(
    probability: float, words: str | None, wait_ms: int
) -> None:
    assert await _wait(_judge(probability), words) == wait_ms


async def test_the_thresholds_are_the_assistants() -> None:
    assert await _wait(_judge(0.6, smart_turn_threshold=0.5), "finished") == 200
    assert await _wait(_judge(0.95, sentence_end_threshold=-0.1), "finished") == 1200


async def test_words_are_read_only_when_streamed_english_and_asked_for() -> None:
    assert _judge(0.9).reads_words(live=True)
    assert not _judge(0.9).reads_words(live=False)  # a decode at every pause does not pay
    assert not _judge(0.9, english=False).reads_words(live=True)
    assert not _judge(0.9, transcript_check=False).reads_words(live=True)
    assert not _judge(0.9, end_of_turn="silence").judges


async def test_a_failing_model_leaves_the_longest_wait() -> None:
    def broken(audio: object) -> float:
        raise RuntimeError("onnxruntime failed")

    models = TurnModels(judge=broken, executor=ThreadPoolExecutor(max_workers=1))
    judge = TurnJudge(TURN, models, english=True, metrics=None)
    assert await _wait(judge, "finished") is None


def test_words_that_come_during_the_pause_change_its_wait() -> None:
    judge = _judge(0.95)
    # The recogniser's words lag: "what time do you" at the pause, the rest 300 ms later.
    assert judge.wait_ms(True, "unfinished") == 1200
    assert judge.wait_ms(True, "finished") == 200
