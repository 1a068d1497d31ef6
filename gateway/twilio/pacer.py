"""The Twilio Media Streams side of a call: paced 20 ms frames, marks, clear, transfer.

Twilio plays whatever it is sent as fast as it arrives into its own buffer; sending on a
20 ms schedule, only `lead_ms` ahead of real time, keeps that buffer short so that a
`clear` on barge-in silences the agent at once and marks come back on time. The frames
and marks themselves are the protocol's (`MediaStreamProtocol`); this is the schedule.

A caller may hang up at any moment, the agent mid-sentence: once the stream stopped (or
its socket is gone) the pacer sends nothing more, and what the session still asks for
(`play`, `mark`, `clear`) is dropped here, counted and logged at debug level, never raised
into the session or the receive loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from audio.frames import FRAME_MS, PCM16
from gateway.metrics import GatewayMetrics
from telephony.errors import StreamClosed, TransferError
from telephony.twilio import MediaStreamProtocol
from telephony.twilio.protocol import SAMPLE_RATE

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000


@dataclass(slots=True)
class PacingStats:
    frames_sent: int = 0
    frames_late: int = 0  # sent more than 20 ms after the time it is due to play
    underruns: int = 0  # the queue ran dry mid-speech: the producer, not the pacer, was late
    max_lateness_ms: float = 0.0


class AgentRecording(Protocol):
    """The agent's side of a call's recording (`CallRecorder`), fed as frames are sent."""

    def agent_audio(self, due: float, pcm: PCM16) -> None: ...

    def agent_cleared(self, at: float) -> None: ...


class TwilioPacer:
    """`CallTransport` over one Media Stream; `run()` is the pacer task.

    `send_text` writes one text frame to the socket and raises `StreamClosed` once the
    socket is gone. `clock` and `sleep` are the pacer's time: a test passes a virtual clock
    for both.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        *,
        protocol: MediaStreamProtocol,
        send_text: Callable[[str], Awaitable[None]],
        metrics: GatewayMetrics,
        lead_ms: int = 60,
        max_queued_ms: int = 2000,
        transfer: Callable[[str], Awaitable[None]] | None = None,
        recorder: AgentRecording | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._protocol = protocol
        self._send_text = send_text
        self._metrics = metrics
        self._transfer = transfer
        self._recorder = recorder
        self._lead_s = lead_ms / 1000.0
        self._max_queued_frames = max(1, max_queued_ms // FRAME_MS)
        self._clock = clock
        self._sleep = sleep
        self._generation = 0  # bumped by every clear
        self._next_due: float | None = None  # when the next frame is due to play
        self._ran_dry = False  # the queue emptied since the last frame was sent
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._paused = False  # the caller speaks over the agent: hold the queued audio
        self.stats = PacingStats()

    def _sending(self) -> bool:
        return not self._closed and self._protocol.open

    def _dropped(self, what: str) -> bool:
        """True (and counted) if the stream is over, so `what` is not sent."""
        if self._sending():
            return False
        self._metrics.outbound_dropped_after_stop_total += 1
        log.debug("%s dropped: the media stream is over", what)
        return True

    async def play(self, pcm: PCM16) -> None:
        """Queue agent audio; waits while more than `max_queued_ms` is queued."""
        if self._dropped("agent audio"):
            return
        self._protocol.send_audio(pcm)
        self._wakeup.set()
        while self._protocol.queued_frames >= self._max_queued_frames and self._sending():
            self._space.clear()
            await self._space.wait()

    async def mark(self, name: str) -> None:
        if self._dropped("mark"):
            return
        self._protocol.send_mark(name)
        self._wakeup.set()  # padding a partial frame may have queued one more
        await self._flush()  # a mark with no audio before it goes out now

    async def pause(self) -> None:
        """Send no more agent audio until `resume()`; only the `lead_ms` Twilio holds plays."""
        self._paused = True

    async def resume(self) -> None:
        """Send the held audio on, on a new 20 ms schedule from now."""
        self._paused = False
        self._next_due = None  # a new schedule from now: the pause was no underrun
        self._wakeup.set()

    async def clear(self) -> None:
        self._generation += 1
        self._next_due = None
        self._paused = False
        self._wakeup.set()
        self._space.set()
        if self._dropped("clear"):
            return
        if self._recorder is not None:
            self._recorder.agent_cleared(self._clock())
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
        """Release queued frames on a 20 ms schedule, `lead_ms` ahead of real time, until
        closed or the stream stops."""
        while self._sending():
            if self._paused or not self._protocol.queued_frames:
                if not self._paused:
                    self._ran_dry = True
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            generation = self._generation
            now = self._clock()
            if self._next_due is None or now > self._next_due:
                # Twilio's buffer has run dry (or nothing was playing): a new schedule starts
                # now. Within a second of the last frame, because the producer left the
                # queue empty, that is an underrun the caller heard.
                if self._ran_dry and self._next_due is not None and now - self._next_due < 1.0:
                    self.stats.underruns += 1
                    self._metrics.outbound_underruns_total += 1
                self._next_due = now
            # The next frame is due to play at `_next_due`; it is sent `lead` ahead of that.
            delay = self._next_due - self._lead_s - now
            if delay > 0:
                await self._sleep(delay)
            if generation != self._generation or self._paused or not self._sending():
                continue  # cleared, paused (or ended) while waiting: that frame is not sent
            pcm = self._protocol.release_frame()
            if pcm is None:
                continue
            self._ran_dry = False
            if self._protocol.queued_frames < self._max_queued_frames:
                self._space.set()
            lateness = self._clock() - self._next_due
            if lateness > FRAME_S:
                self.stats.frames_late += 1
                self._metrics.outbound_frames_late_total += 1
            self.stats.max_lateness_ms = max(self.stats.max_lateness_ms, lateness * 1000.0)
            if self._recorder is not None:
                self._recorder.agent_audio(self._next_due, pcm)
            await self._flush()
            self.stats.frames_sent += 1
            self._metrics.outbound_frames_total += 1
            self._next_due += FRAME_S
        self._space.set()  # a `play` waiting for room must not wait for a stopped stream

    async def _flush(self) -> None:
        async with self._write_lock:
            for text in self._protocol.data_to_send():
                if not self._sending():
                    return  # the stream ended while earlier frames were written
                try:
                    await self._send_text(text)
                except StreamClosed:
                    # The socket went before `stop` was read (or instead of it): the
                    # stream is over; the receive loop sees the disconnect and ends the call.
                    log.debug("media stream socket gone; the pacer stops")
                    self._protocol.connection_lost()
                    self._wakeup.set()
                    self._space.set()
                    return
