"""Cuts streamed reply text into speakable chunks as soon as a sentence or clause completes."""

from __future__ import annotations

import re

# A sentence end followed by whitespace; clause breaks only once a chunk is long enough to be
# worth a TTS request of its own.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")
_MIN_CLAUSE_CHARS = 40


class SentenceChunker:
    """Feed text deltas with `push()`; it returns the chunks that are complete so far."""

    def __init__(self) -> None:
        self._buffer = ""

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        chunks: list[str] = []
        while True:
            match = _SENTENCE_END.search(self._buffer)
            if match is None:
                match = next(
                    (
                        m
                        for m in _CLAUSE_END.finditer(self._buffer)
                        if m.start() >= _MIN_CLAUSE_CHARS
                    ),
                    None,
                )
                if match is None:
                    break
            chunk = self._buffer[: match.start()].strip()
            self._buffer = self._buffer[match.end() :]
            if chunk:
                chunks.append(chunk)
        return chunks

    def flush(self) -> list[str]:
        """Return whatever text remains as a last chunk."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []
