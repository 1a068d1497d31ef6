"""The turn-level TTS interface on top of a synthesiser that speaks one text at a time.

Local engines (espeak-ng) have no streaming connection: each sentence is its own
synthesis. `SentenceSpeech` queues the sentences of a turn and synthesises them in
order while earlier audio is already playing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import numpy.typing as npt

from gateway.providers.base import SegmentDone, SpeechAudio, SpeechEvent

Synthesize = Callable[[str], AsyncIterator[npt.NDArray[np.int16]]]

_END = object()


class SentenceSpeech:
    """`SpeechStream` that runs `synthesize(text)` for each sentence in turn."""

    def __init__(self, synthesize: Synthesize) -> None:
        self._synthesize = synthesize
        self._texts: asyncio.Queue[str | object] = asyncio.Queue()
        self._cancelled = False

    async def say(self, text: str) -> None:
        await self._texts.put(text)

    async def finish(self) -> None:
        await self._texts.put(_END)

    async def audio(self) -> AsyncIterator[SpeechEvent]:
        segment = 0
        while not self._cancelled:
            text = await self._texts.get()
            if not isinstance(text, str):
                return
            chunks = self._synthesize(text)
            try:
                async for pcm in chunks:
                    if self._cancelled:
                        return
                    yield SpeechAudio(segment, pcm)
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            yield SegmentDone(segment)
            segment += 1

    async def cancel(self) -> None:
        self._cancelled = True
        self._texts.put_nowait(_END)


class SentenceConnection:
    """`TTSConnection` of a one-text-at-a-time synthesiser (nothing to connect or close)."""

    def __init__(self, synthesize: Synthesize) -> None:
        self._synthesize = synthesize

    def turn(self) -> SentenceSpeech:
        return SentenceSpeech(self._synthesize)

    async def aclose(self) -> None:
        return None
