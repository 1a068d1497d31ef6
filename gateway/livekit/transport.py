"""The LiveKit side of a call: the agent's audio track, marks, clear, transfer.

Agent audio goes into an `rtc.AudioSource` whose queue holds only `lead_ms`; its
`capture_frame` waits while the queue is full, so the source paces the pacer and a
barge-in `clear_queue()` silences the agent at once. A mark is "played" when the audio
queued before it has left the source, i.e. `queued_duration` after it was reached.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

import numpy as np
from livekit import rtc

from audio.frames import PCM16
from gateway.metrics import GatewayMetrics
from telephony.errors import TransferError

log = logging.getLogger(__name__)

RATE = 16000
FRAME_SAMPLES = RATE // 50  # 20 ms


class LiveKitTransport:
    """`CallTransport` publishing the agent's track in a room; `run()` is the pacer task."""

    sample_rate = RATE

    def __init__(
        self,
        *,
        source: rtc.AudioSource,
        on_mark: Callable[[str], None],
        metrics: GatewayMetrics,
        transfer: Callable[[str], Awaitable[None]] | None = None,
        max_queued_ms: int = 2000,
    ) -> None:
        self._source = source
        self._on_mark = on_mark
        self._transfer = transfer
        self._metrics = metrics
        self._queue: collections.deque[PCM16 | str] = collections.deque()
        self._partial = np.zeros(0, dtype=np.int16)
        self._max_queued_frames = max(1, max_queued_ms // 20)
        self._queued_frames = 0
        self._generation = 0
        self._marks: set[asyncio.TimerHandle] = set()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False
        self._last_capture = float("-inf")

    async def play(self, pcm: PCM16) -> None:
        """Queue agent audio in 20 ms frames; waits while more than `max_queued_ms` is queued."""
        data = np.concatenate([self._partial, pcm]) if self._partial.size else pcm
        whole = data.size - data.size % FRAME_SAMPLES
        for offset in range(0, whole, FRAME_SAMPLES):
            self._queue.append(data[offset : offset + FRAME_SAMPLES])
            self._queued_frames += 1
        self._partial = data[whole:].copy()
        self._wakeup.set()
        if self._queued_frames >= self._max_queued_frames:
            self._space.clear()
            await self._space.wait()

    async def mark(self, name: str) -> None:
        if self._partial.size:
            padded = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            padded[: self._partial.size] = self._partial
            self._queue.append(padded)
            self._queued_frames += 1
            self._partial = np.zeros(0, dtype=np.int16)
        self._queue.append(name)
        self._wakeup.set()

    async def clear(self) -> None:
        self._generation += 1
        self._last_capture = float("-inf")  # what follows a clear starts a new stretch
        self._queue.clear()
        self._partial = np.zeros(0, dtype=np.int16)
        self._queued_frames = 0
        self._space.set()
        for handle in self._marks:
            handle.cancel()
        self._marks.clear()
        if not self._closed:
            self._source.clear_queue()

    async def transfer(self, to: str) -> None:
        if self._transfer is None:
            raise TransferError("this LiveKit call cannot be transferred")
        await self._transfer(to)

    def close(self) -> None:
        """Stop the pacer (the room is being left)."""
        self._closed = True
        self._wakeup.set()
        self._space.set()
        for handle in self._marks:
            handle.cancel()
        self._marks.clear()

    def _mark_played(self, name: str, handle_box: list[asyncio.TimerHandle]) -> None:
        self._marks.discard(handle_box[0])
        self._on_mark(name)

    async def run(self) -> None:
        """Feed queued frames into the source; its bounded queue sets the pace."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._queue.popleft()
            if isinstance(item, str):
                box: list[asyncio.TimerHandle] = []
                handle = loop.call_later(self._source.queued_duration, self._mark_played, item, box)
                box.append(handle)
                self._marks.add(handle)
                continue
            self._queued_frames -= 1
            if self._queued_frames < self._max_queued_frames:
                self._space.set()
            frame = rtc.AudioFrame(item.tobytes(), RATE, 1, FRAME_SAMPLES)
            generation = self._generation
            now = loop.time()
            if self._source.queued_duration == 0 and now - self._last_capture < 1.0:
                # The source ran dry within a second of the last frame: the caller heard a gap.
                self._metrics.outbound_underruns_total += 1
            await self._source.capture_frame(frame)
            self._last_capture = loop.time()
            if generation == self._generation:
                self._metrics.outbound_frames_total += 1
