"""The Twilio Media Streams side of a call: paced 20 ms mu-law frames, marks, clear, transfer.

Twilio plays whatever it is sent as fast as it arrives into its own buffer; sending on a
20 ms schedule, only `lead_ms` ahead of real time, keeps that buffer short so that a
`clear` on barge-in silences the agent at once and marks come back on time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from audio.codec import ulaw_decode, ulaw_encode
from audio.frames import PCM16
from gateway.metrics import GatewayMetrics
from gateway.recording.recorder import CallRecorder
from telephony.errors import TransferError
from telephony.twilio import MediaStreamProtocol

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_S = 0.020
_SILENCE = b"\xff"  # mu-law code of zero


@dataclass(slots=True)
class PacingStats:
    frames_sent: int = 0
    frames_late: int = 0  # sent more than 20 ms after the time it is due to play
    underruns: int = 0  # the queue ran dry mid-speech: the producer, not the pacer, was late
    max_lateness_ms: float = 0.0


class TwilioPacer:
    """`CallTransport` over one Media Stream; `run()` is the pacer task."""

    sample_rate = 8000

    def __init__(
        self,
        *,
        protocol: MediaStreamProtocol,
        send_text: Callable[[str], Awaitable[None]],
        metrics: GatewayMetrics,
        lead_ms: int = 60,
        max_queued_ms: int = 2000,
        transfer: Callable[[str], Awaitable[None]] | None = None,
        recorder: CallRecorder | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._protocol = protocol
        self._send_text = send_text
        self._metrics = metrics
        self._transfer = transfer
        self._recorder = recorder
        self._lead_s = lead_ms / 1000.0
        self._max_queued_frames = max(1, max_queued_ms // 20)
        self._clock = clock
        self._queue: collections.deque[bytes | str] = collections.deque()
        self._partial = b""
        self._queued_frames = 0
        self._generation = 0
        self._next_due: float | None = None
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.stats = PacingStats()

    async def play(self, pcm: PCM16) -> None:
        """Encode and queue agent audio; waits while more than `max_queued_ms` is queued."""
        data = self._partial + ulaw_encode(pcm)
        whole = len(data) - len(data) % FRAME_BYTES
        for offset in range(0, whole, FRAME_BYTES):
            self._queue.append(data[offset : offset + FRAME_BYTES])
            self._queued_frames += 1
        self._partial = data[whole:]
        self._wakeup.set()
        if self._queued_frames >= self._max_queued_frames:
            self._space.clear()
            await self._space.wait()

    async def mark(self, name: str) -> None:
        if self._partial:
            self._queue.append(self._partial + _SILENCE * (FRAME_BYTES - len(self._partial)))
            self._queued_frames += 1
            self._partial = b""
        self._queue.append(name)
        self._wakeup.set()

    async def clear(self) -> None:
        self._generation += 1
        self._queue.clear()
        self._partial = b""
        self._queued_frames = 0
        self._next_due = None
        self._space.set()
        if self._recorder is not None:
            self._recorder.agent_cleared(self._clock())
        if not self._closed:
            self._protocol.send_clear()
            await self._flush()

    def close(self) -> None:
        """Stop the pacer: the call is ending, nothing more is sent."""
        self._closed = True
        self._wakeup.set()
        self._space.set()

    async def transfer(self, to: str) -> None:
        """Dial `to` through Twilio's REST API (needs TWILIO_ACCOUNT_SID)."""
        if self._transfer is None:
            raise TransferError("transfers need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        await self._transfer(to)

    async def run(self) -> None:
        """Send queued frames on a 20 ms schedule, `lead_ms` ahead of real time."""
        while not self._closed:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self._queue.popleft()
            if isinstance(item, str):
                self._protocol.send_mark(item)
                await self._flush()
                continue
            self._queued_frames -= 1
            if self._queued_frames < self._max_queued_frames:
                self._space.set()
            generation = self._generation
            now = self._clock()
            if self._next_due is None or now > self._next_due:
                # Twilio's buffer has run dry (or nothing was playing): a new schedule starts
                # now. Within a second of the last frame that is a gap the caller heard.
                if self._next_due is not None and now - self._next_due < 1.0:
                    self.stats.underruns += 1
                    self._metrics.outbound_underruns_total += 1
                self._next_due = now
            # Frame k is due to play at `_next_due`; it is sent `lead` ahead of that.
            delay = self._next_due - self._lead_s - now
            if delay > 0:
                await asyncio.sleep(delay)
            if generation != self._generation or self._closed:
                continue  # cleared while waiting
            lateness = self._clock() - self._next_due
            if lateness > FRAME_S:
                self.stats.frames_late += 1
                self._metrics.outbound_frames_late_total += 1
            self.stats.max_lateness_ms = max(self.stats.max_lateness_ms, lateness * 1000.0)
            if self._recorder is not None:
                self._recorder.agent_audio(self._next_due, ulaw_decode(item))
            self._protocol.send_audio(item)
            await self._flush()
            self.stats.frames_sent += 1
            self._metrics.outbound_frames_total += 1
            self._next_due += FRAME_S

    async def _flush(self) -> None:
        async with self._write_lock:
            for text in self._protocol.data_to_send():
                if self._closed:
                    return
                await self._send_text(text)
