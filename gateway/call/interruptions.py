"""Whether caller speech over the agent interrupts it: words that are only an
acknowledgement ("uh-huh", "yeah", "okay") or no words at all (a cough, a click) do not;
any other word does, and so does speech that goes on longer than a bound."""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower().replace("-", " ")))


class InterruptionPolicy:
    """Judges what the caller said while the agent was speaking."""

    def __init__(self, backchannels: Iterable[str], *, min_speech_ms: int) -> None:
        phrases = {_words(phrase) for phrase in backchannels}
        self._phrases = {phrase for phrase in phrases if phrase}
        self._longest = max((len(phrase) for phrase in self._phrases), default=0)
        self.min_speech_ms = min_speech_ms

    def interrupts(self, text: str) -> bool:
        """True if `text` holds a word that is not part of an acknowledgement."""
        words = _words(text)
        return not self._covered(words)

    def _covered(self, words: tuple[str, ...]) -> bool:
        """True if `words` split wholly into acknowledgement phrases (greedy, longest first)."""
        i = 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 0, -1):
                if words[i : i + size] in self._phrases:
                    i += size
                    break
            else:
                return False
        return True
