"""A small bigram language model (ARPA text) built from example caller sentences.

The offline recogniser decodes phone audio far better against the vocabulary of the
calls it serves than against a general English model (`bench/stt_wer.py` measures both).
"""

from __future__ import annotations

import functools
import itertools
import math
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pocketsphinx import get_model_path

DEFAULT_CORPUS = Path(__file__).parent / "data" / "domain_corpus.txt"
_DISCOUNT = 0.5


def read_corpus(path: Path = DEFAULT_CORPUS) -> list[list[str]]:
    """Sentences of the corpus file, one per line, as lower-case word lists."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.lower().split() for line in lines if line.strip() and not line.startswith("#")]


def _write_temp(text: str, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(
        "w", prefix="voice-gateway-", suffix=suffix, delete=False, encoding="utf-8"
    )
    with handle:
        handle.write(text)
    return Path(handle.name)


@functools.cache
def default_lm_file() -> Path:
    """The default corpus's model, written once per process to a temporary file."""
    return _write_temp(build_arpa(read_corpus()), ".lm")


@functools.cache
def default_dict_file() -> Path:
    """The pronunciations of the corpus's words only, from the bundled CMU dictionary.

    Loading the whole 130k-word dictionary takes ~1.5 s with the GIL held (every call on
    the event loop would stall while a recogniser loads); the corpus's words load in ~35 ms.
    """
    return _write_temp(pronunciations(read_corpus(), bundled_dictionary()), ".dict")


def bundled_dictionary() -> Path:
    """PocketSphinx's CMU pronouncing dictionary for its en-us model."""
    return Path(get_model_path()) / "en-us" / "cmudict-en-us.dict"


def pronunciations(sentences: Iterable[list[str]], dictionary: Path) -> str:
    """The lines of `dictionary` (alternates included) for the words of `sentences`."""
    words = {word for sentence in sentences for word in sentence}
    lines = []
    found = set()
    for line in dictionary.read_text(encoding="utf-8").splitlines():
        head = line.split(" ", 1)[0]
        base = head.split("(", 1)[0]
        if base in words:
            lines.append(line)
            found.add(base)
    if missing := words - found:
        raise ValueError(f"words with no pronunciation in {dictionary.name}: {sorted(missing)}")
    return "\n".join(lines) + "\n"


def build_arpa(sentences: Iterable[list[str]]) -> str:
    """A Witten-Bell-free, absolutely discounted bigram model with backoff, as ARPA text."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for words in sentences:
        tokens = ["<s>", *words, "</s>"]
        unigrams.update(tokens)
        bigrams.update(itertools.pairwise(tokens))
    vocab = sorted(unigrams)
    total = sum(c for w, c in unigrams.items() if w != "<s>")
    # Add-one smoothed unigrams, so every word can follow any other through backoff.
    p_uni = {w: (unigrams[w] + 1) / (total + len(vocab)) for w in vocab}
    followers: dict[str, list[str]] = {}
    for w1, w2 in bigrams:
        followers.setdefault(w1, []).append(w2)
    p_bi: dict[tuple[str, str], float] = {}
    backoff: dict[str, float] = {}
    for w1, seen in followers.items():
        count = sum(bigrams[(w1, w2)] for w2 in seen)
        for w2 in seen:
            p_bi[(w1, w2)] = (bigrams[(w1, w2)] - _DISCOUNT) / count
        left = _DISCOUNT * len(seen) / count
        unseen_mass = 1.0 - sum(p_uni[w2] for w2 in seen if w2 != "<s>")
        backoff[w1] = left / max(unseen_mass, 1e-9)

    def log10(p: float) -> str:
        return f"{math.log10(p):.4f}"

    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(p_bi)}", "", "\\1-grams:"]
    for w in vocab:
        prob = "-99.0000" if w == "<s>" else log10(p_uni[w])
        lines.append(f"{prob} {w} {log10(backoff[w])}" if w in backoff else f"{prob} {w}")
    lines += ["", "\\2-grams:"]
    for (w1, w2), p in sorted(p_bi.items()):
        lines.append(f"{log10(p)} {w1} {w2}")
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)
