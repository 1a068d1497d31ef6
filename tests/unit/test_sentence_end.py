"""The transcript's half of the turn judge: PocketSphinx's English trigram model reads
whether the words so far end a sentence."""

from __future__ import annotations

import pytest

from gateway.call.sentence_end import SentenceEnds


@pytest.fixture(scope="module")
def sentences() -> SentenceEnds:
    return SentenceEnds.load()


@pytest.mark.parametrize(
    "text",
    ["What are your opening hours?", "yes please", "Thank you.", "I want to speak to someone"],
)
def test_finished_sentences_read_finished(sentences: SentenceEnds, text: str) -> None:
    assert sentences.ends(text) is True


@pytest.mark.parametrize(
    "text",
    ["I was wondering if", "my account number is", "what time do you", "Can you tell me about the"],
)
def test_sentences_cut_at_a_pause_read_unfinished(sentences: SentenceEnds, text: str) -> None:
    assert sentences.ends(text) is False


def test_no_words_say_nothing(sentences: SentenceEnds) -> None:
    assert sentences.ends("") is None and sentences.end_log10(" ... ") is None
    score = sentences.end_log10("yes please")
    assert score is not None and -1.0 < score < 0.0  # a log10 probability
