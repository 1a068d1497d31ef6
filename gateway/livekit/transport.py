"""The LiveKit side of a call: the agent's audio track, marks, clear, transfer.

Agent audio goes into an `rtc.AudioSource` whose queue holds only `lead_ms`; its
`capture_frame` waits while the queue is full, so the source paces the pacer and a
barge-in `clear_queue()` silences the agent at once. A mark is "played" when the audio
queued before it has left the source, i.e. `queued_duration` after it was reached.

Frames go into the source `CAPTURE_FRAMES` at a time (never across a mark): each capture
is a round trip through the SDK's native core whose answer every subscriber of the SDK's
event fan-out looks at, so fewer, longer captures cost less per second of audio.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from livekit import rtc

from audio.frames import FRAME_MS, PCM16, FrameQueue
from gateway.metrics import GatewayMetrics
from telephony.errors import TransferError

log = logging.getLogger(__name__)

RATE = 16000
# 20 ms frames per capture: 40 ms keeps the source between 60 ms and `lead_ms` (100 ms) full.
CAPTURE_FRAMES = 2


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
        held: bool = False,
    ) -> None:
        """`held`: capture nothing until `release()` (the caller does not receive the track
        yet): the agent's first words are made meanwhile and wait here."""
        self._source = source
        self._on_mark = on_mark
        self._transfer = transfer
        self._metrics = metrics
        self._frames = FrameQueue(RATE)
        self._max_queued_frames = max(1, max_queued_ms // FRAME_MS)
        self._generation = 0  # bumped by every clear
        self._marks: set[asyncio.TimerHandle] = set()  # marks waiting for their audio to play
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False
        self._paused = False  # the caller speaks over the agent: hold the queued audio
        self._held = held  # nobody hears the track yet: hold the queued audio
        self._last_capture = float("-inf")

    async def play(self, pcm: PCM16) -> None:
        """Queue agent audio in 20 ms frames; waits while more than `max_queued_ms` is queued."""
        if self._closed:
            return
        self._frames.push(pcm)
        self._wakeup.set()
        while self._frames.queued_frames >= self._max_queued_frames and not self._closed:
            self._space.clear()
            await self._space.wait()

    async def mark(self, name: str) -> None:
        self._frames.mark(name)
        self._wakeup.set()

    async def pause(self) -> None:
        """Capture no more agent audio until `resume()`; only the source's `lead_ms` plays."""
        self._paused = True

    async def resume(self) -> None:
        """Feed the held audio on into the source."""
        self._paused = False
        self._last_capture = float("-inf")  # the pause was no underrun
        self._wakeup.set()

    def release(self) -> None:
        """The caller receives the track: what was held starts to play."""
        if self._held:
            self._held = False
            self._wakeup.set()

    async def clear(self) -> None:
        self._generation += 1
        self._paused = False
        self._wakeup.set()
        self._last_capture = float("-inf")  # what follows a clear starts a new stretch
        self._frames.clear()
        self._space.set()
        self._cancel_marks()
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
        self._cancel_marks()

    def _cancel_marks(self) -> None:
        for handle in self._marks:
            handle.cancel()
        self._marks.clear()

    def _mark_reached(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        """Report `name` played once the audio now in the source has left it."""
        handle: asyncio.TimerHandle | None = None

        def played() -> None:
            assert handle is not None
            self._marks.discard(handle)
            self._on_mark(name)

        handle = loop.call_later(self._source.queued_duration, played)
        self._marks.add(handle)

    async def run(self) -> None:
        """Feed queued frames into the source; its bounded queue sets the pace."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            # Markers are taken here, after the capture before them has returned, so that
            # a frame still being captured counts in the source's `queued_duration`.
            for name in self._frames.pop_markers():
                self._mark_reached(loop, name)
            pcm = None if self._paused or self._held else self._frames.pop_frame()
            if pcm is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            parts = [pcm]
            while len(parts) < CAPTURE_FRAMES and not self._frames.marker_due:
                more = self._frames.pop_frame()
                if more is None:
                    break
                parts.append(more)
            if self._frames.queued_frames < self._max_queued_frames:
                self._space.set()
            data = parts[0].tobytes() if len(parts) == 1 else b"".join(p.tobytes() for p in parts)
            frame = rtc.AudioFrame(data, RATE, 1, len(data) // 2)
            generation = self._generation
            now = loop.time()
            if self._source.queued_duration == 0 and now - self._last_capture < 1.0:
                # The source ran dry within a second of the last frame: the caller heard a gap.
                self._metrics.outbound_underruns_total += 1
            await self._source.capture_frame(frame)
            if generation != self._generation:
                # Cleared while this frame waited for room: it can still have gone in after
                # the source was emptied, and must not be heard after the barge-in.
                if not self._closed:
                    self._source.clear_queue()
                continue
            self._last_capture = loop.time()
            self._metrics.outbound_frames_total += len(parts)
