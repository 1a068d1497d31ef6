from gateway.call.sentences import SentenceChunker


def test_sentences_come_out_as_soon_as_they_end() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Hello the") == []
    assert chunker.push("re. How are") == ["Hello there."]
    assert chunker.push(" you? Fine") == ["How are you?"]
    assert chunker.flush() == ["Fine"]
    assert chunker.flush() == []


def test_long_clauses_are_cut_at_commas_short_ones_are_not() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Yes, ") == []
    long_clause = "our next free slot is tomorrow morning at ten o'clock sharp, "
    assert chunker.push(long_clause) == [
        "Yes, our next free slot is tomorrow morning at ten o'clock sharp,"
    ]


def test_decimal_points_do_not_end_sentences() -> None:
    chunker = SentenceChunker()
    assert chunker.push("It costs 4.50 dollars") == []
    assert chunker.flush() == ["It costs 4.50 dollars"]
