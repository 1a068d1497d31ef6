"""Offline speech-to-text with PocketSphinx (its English model ships in the PyPI wheel).

An utterance's audio is collected as it streams in and decoded in one pass when the
session's endpointing closes the turn: PocketSphinx's batch cepstral-mean normalisation
is far more accurate on telephone-band audio than its live estimate (which starts from
wide-band statistics), at ~0.1 s of decoding per utterance. Decoding runs on one worker
thread per call, so many calls never block the event loop. A domain language model (an
ARPA file) may replace the general one: `bench/stt_wer.py` measures both. An utterance
keeps at most its newest `max_utterance_s` of audio (a caller who never pauses, or a
stream of noise, cannot grow it without bound).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
from pocketsphinx import Config, Decoder

from audio.frames import AudioFrame
from gateway.errors import ProviderError
from gateway.providers.base import Transcript

log = logging.getLogger(__name__)

_FILLER = re.compile(r"<[^>]*>|\[[^\]]*\]|\([0-9]+\)")


def _clean(hypothesis: str) -> str:
    return " ".join(_FILLER.sub(" ", hypothesis).split()).lower()


class PocketSphinxSTT:
    """`STT` on PocketSphinx's bundled en-us model at 16 kHz; `lm_path` picks another LM.

    Loading a decoder takes ~0.25 s and holds the GIL, which would stall every other call
    on the event loop; decoders are therefore pooled: a call takes one from the pool and
    gives it back at hang-up, so a steady load creates none. `prewarm` loads some ahead.
    """

    name = "pocketsphinx"
    sample_rate = 16000

    def __init__(
        self,
        *,
        lm_path: Path | None = None,
        dict_path: Path | None = None,
        prewarm: int = 0,
        max_utterance_s: float = 30.0,
    ) -> None:
        self._lm_path = lm_path
        self._dict_path = dict_path
        self._max_utterance_bytes = int(max_utterance_s * self.sample_rate) * 2
        self._pool: list[Decoder] = [self._decoder() for _ in range(prewarm)]

    def _decoder(self) -> Decoder:
        config = Config(loglevel="FATAL")
        if self._lm_path is not None:
            config["lm"] = str(self._lm_path)
        if self._dict_path is not None:
            config["dict"] = str(self._dict_path)
        return Decoder(config)

    continuous = False

    def input_rate(self, transport_rate: int) -> int:
        """The bundled acoustic model is 16 kHz."""
        return self.sample_rate

    async def open_stream(self, *, call_id: str, sample_rate: int) -> PocketSphinxStream:
        if sample_rate != self.sample_rate:
            raise ProviderError(f"PocketSphinx takes {self.sample_rate} Hz", provider=self.name)
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"stt-{call_id[-6:]}"
        )
        if self._pool:
            decoder = self._pool.pop()
        else:
            loop = asyncio.get_running_loop()
            try:
                decoder = await loop.run_in_executor(executor, self._decoder)
            except RuntimeError as exc:
                executor.shutdown(wait=False)
                raise ProviderError(
                    f"pocketsphinx failed to start: {exc}", provider=self.name
                ) from exc
        return PocketSphinxStream(
            decoder,
            executor,
            release=self._pool.append,
            max_utterance_bytes=self._max_utterance_bytes,
            call_id=call_id,
        )


class PocketSphinxStream:
    """One call's recogniser: frames in, one final transcript per `end_utterance()`."""

    live_words = False

    def __init__(
        self,
        decoder: Decoder,
        executor: concurrent.futures.ThreadPoolExecutor,
        *,
        release: Callable[[Decoder], None],
        max_utterance_bytes: int = 30 * 16000 * 2,
        call_id: str = "",
    ) -> None:
        self._decoder = decoder
        self._release = release
        self._executor = executor
        self._queue: asyncio.Queue[Transcript | None] = asyncio.Queue()
        self._utterance: collections.deque[bytes] = collections.deque()
        self._buffered = 0  # bytes in `_utterance`
        self._max_bytes = max_utterance_bytes
        self._trimmed = False  # this utterance lost its oldest audio (logged once)
        self._call_id = call_id
        self._closed = False

    @property
    def buffered_s(self) -> float:
        """Seconds of audio held for the current utterance."""
        return self._buffered / 2 / PocketSphinxSTT.sample_rate

    def _decode(self, pcm: bytes) -> str:
        if not pcm:
            return ""
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, False, True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return _clean(hypothesis.hypstr) if hypothesis is not None else ""

    async def push(self, frame: AudioFrame, *, quiet: bool = False) -> None:
        if self._closed:
            return
        chunk = np.ascontiguousarray(frame.pcm, dtype=np.int16).tobytes()
        self._utterance.append(chunk)
        self._buffered += len(chunk)
        while self._buffered > self._max_bytes and len(self._utterance) > 1:
            self._buffered -= len(self._utterance.popleft())
            if not self._trimmed:
                self._trimmed = True
                log.warning(
                    "utterance over %.0f s: its oldest audio is dropped",
                    self._max_bytes / 2 / PocketSphinxSTT.sample_rate,
                    extra={"call_id": self._call_id},
                )

    async def words_so_far(self) -> str:
        """Decode the utterance held so far (it stays held for the final transcript)."""
        if self._closed or not self._utterance:
            return ""
        pcm = b"".join(self._utterance)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode, pcm)

    async def end_utterance(self) -> None:
        if self._closed:
            return
        pcm = b"".join(self._utterance)
        self._utterance.clear()
        self._buffered = 0
        self._trimmed = False
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._executor, self._decode, pcm)
        await self._queue.put(Transcript(text=text, is_final=True))

    async def transcripts(self) -> AsyncIterator[Transcript]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        # Wait for a decode in flight so the decoder is idle when another call takes it.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        self._release(self._decoder)
