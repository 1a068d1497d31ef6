"""Whether the caller's words so far end a sentence, read by an English trigram language
model (PocketSphinx's en-us model, shipped in its PyPI wheel): the probability of a
sentence end after the last two words. "I was wondering if" and "my account number is"
read unfinished; "what are your opening hours" and "yes please" read finished. It is the
transcript's half of the turn judge (the audio model is the other); cheap (microseconds).
"""

from __future__ import annotations

import re
from pathlib import Path

import pocketsphinx
from pocketsphinx import Config, LogMath, NGramModel

_WORD = re.compile(r"[a-z']+")
# log10 P(end of sentence | last two words) at or above which the words read finished.
DEFAULT_THRESHOLD = -1.3


class SentenceEnds:
    """Scores how likely a sentence ends after the words so far."""

    def __init__(self, model: NGramModel, logmath: LogMath) -> None:
        self._model = model
        self._logmath = logmath

    @classmethod
    def load(cls, path: Path | None = None) -> SentenceEnds:
        """The en-us trigram model of the pocketsphinx package (or the one at `path`)."""
        path = path or Path(pocketsphinx.get_model_path()) / "en-us" / "en-us.lm.bin"
        logmath = LogMath()
        return cls(NGramModel(Config(loglevel="FATAL"), logmath, str(path)), logmath)

    def end_log10(self, text: str) -> float | None:
        """log10 P(the sentence ends here | the last two words); None if there are no words."""
        words = _WORD.findall(text.lower())
        if not words:
            return None
        # The model takes the word first, then its history from the nearest word back.
        score = self._model.prob(["</s>", *reversed(words[-2:])])
        return float(self._logmath.log_to_log10(score))

    def ends(self, text: str, threshold: float = DEFAULT_THRESHOLD) -> bool | None:
        """True if the words read as a finished sentence; None if there are no words."""
        score = self.end_log10(text)
        return None if score is None else score >= threshold
