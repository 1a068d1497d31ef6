"""The LiveKit transport against a real `rtc.AudioSource` (no room needed): 20 ms frames in
order (two to a capture, never across a mark), padding at a mark, marks reported once
their audio has left the source, clear, close, back-pressure and underruns.

The source is LiveKit's own, with its real time-bounded queue; the test subclass only
notes each frame handed to it. What actually leaves the source is heard through a local
track, as a room's subscriber would hear it. These tests wait in real time, but briefly
(the source holds 60 ms), and assert nothing that depends on the machine's speed beyond
"within a second or two".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

from audio.frames import PCM16
from gateway.livekit.transport import CAPTURE_FRAMES, RATE, LiveKitTransport
from gateway.metrics import GatewayMetrics

FRAME = 320  # 20 ms at 16 kHz
SOURCE_QUEUE_MS = 60
EPSILON_S = 1e-6  # asyncio may run a timer a clock tick early


class NotingSource(rtc.AudioSource):
    """LiveKit's audio source, noting every 20 ms frame handed to it (a capture may hand
    over several) and how many frames each capture held."""

    def __init__(self) -> None:
        super().__init__(RATE, 1, queue_size_ms=SOURCE_QUEUE_MS)
        self.captured: list[PCM16] = []
        self.capture_sizes: list[int] = []

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        pcm = np.frombuffer(frame.data, dtype=np.int16).copy()
        assert pcm.size % FRAME == 0, "captures are whole 20 ms frames"
        self.captured.extend(pcm[k : k + FRAME] for k in range(0, pcm.size, FRAME))
        self.capture_sizes.append(pcm.size // FRAME)
        await super().capture_frame(frame)


@dataclass
class MarkReport:
    name: str
    queued_s: float  # the source's queued duration when the mark was reported
    handed: int  # frames handed to the source by then


@dataclass
class Harness:
    transport: LiveKitTransport
    source: NotingSource
    metrics: GatewayMetrics
    task: asyncio.Task[None]
    marks: list[MarkReport] = field(default_factory=list)
    heard: list[PCM16] = field(default_factory=list)  # what left the source, 10 ms at a time

    async def wait_for(self, condition: Callable[[], bool], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    async def wait_mark(self, name: str) -> MarkReport:
        await self.wait_for(lambda: any(m.name == name for m in self.marks))
        return next(m for m in self.marks if m.name == name)

    def heard_audio(self) -> PCM16:
        """What the track played, from its first non-silent sample on."""
        pcm = np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)
        nonzero = np.flatnonzero(pcm)
        return pcm[nonzero[0] :] if nonzero.size else pcm[:0]


@asynccontextmanager
async def running_transport(
    *, max_queued_ms: int = 2000, held: bool = False
) -> AsyncIterator[Harness]:
    source = NotingSource()
    metrics = GatewayMetrics()
    reports: list[MarkReport] = []

    def on_mark(name: str) -> None:
        reports.append(MarkReport(name, source.queued_duration, len(source.captured)))

    transport = LiveKitTransport(
        source=source, on_mark=on_mark, metrics=metrics, max_queued_ms=max_queued_ms, held=held
    )
    track = rtc.LocalAudioTrack.create_audio_track("agent", source)
    stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=10)
    harness = Harness(transport, source, metrics, asyncio.create_task(transport.run()), reports)

    async def listen() -> None:
        async for event in stream:
            harness.heard.append(np.frombuffer(event.frame.data, dtype=np.int16).copy())

    listener = asyncio.create_task(listen(), name="listener")
    try:
        yield harness
    finally:
        transport.close()
        await asyncio.wait_for(harness.task, 10.0)
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await stream.aclose()
        await source.aclose()


def _speech(frames: float, first: int = 1) -> PCM16:
    """Audio in which every sample says where it is: frame k holds first + k, never 0."""
    return (first + np.arange(int(frames * FRAME)) // FRAME).astype(np.int16)


async def test_20_ms_frames_leave_in_order_with_padding_at_a_mark() -> None:
    async with running_transport() as h:
        first, second = _speech(3.5), _speech(2, first=50)
        await h.transport.play(first)  # 3 frames and half of one
        await h.transport.mark("a")
        await h.transport.play(second)
        await h.transport.mark("b")
        await h.wait_mark("b")
        padded = np.concatenate([first[3 * FRAME :], np.zeros(FRAME // 2, dtype=np.int16)])
        frames = [first[k * FRAME : (k + 1) * FRAME] for k in range(3)] + [padded]
        frames += [second[:FRAME], second[FRAME:]]
        assert len(h.source.captured) == 6
        for got, want in zip(h.source.captured, frames, strict=True):
            assert np.array_equal(got, want)
        assert h.metrics.outbound_frames_total == 6
        assert [m.name for m in h.marks] == ["a", "b"]
        # The track played that audio in that order (compared without silence, so that a
        # gap on a loaded machine does not count; the padding is checked as handed over).
        played = np.concatenate(frames)
        played = played[played != 0]
        await h.wait_for(lambda: np.count_nonzero(h.heard_audio()) >= played.size)
        heard = h.heard_audio()
        assert np.array_equal(heard[heard != 0], played)


async def test_frames_go_in_two_at_a_time_but_never_across_a_mark() -> None:
    async with running_transport() as h:
        await h.transport.play(_speech(3))
        await h.transport.mark("a")  # after the third frame: it goes in alone
        await h.transport.play(_speech(2, first=10))
        await h.transport.mark("b")
        await h.wait_mark("b")
        assert h.source.capture_sizes == [CAPTURE_FRAMES, 1, CAPTURE_FRAMES]
        assert h.metrics.outbound_frames_total == 5
        assert [m.name for m in h.marks] == ["a", "b"]


async def test_held_audio_waits_for_release_even_through_a_clear() -> None:
    async with running_transport(held=True) as h:
        await h.transport.play(_speech(3))
        await h.transport.mark("a")
        await asyncio.sleep(0.1)
        assert h.source.captured == [] and h.marks == []
        await h.transport.clear()  # a barge-in before the caller hears the track
        await h.transport.play(_speech(2, first=10))
        await h.transport.mark("b")
        await asyncio.sleep(0.1)
        assert h.source.captured == []
        h.transport.release()
        await h.wait_mark("b")
        assert [int(f[0]) for f in h.source.captured] == [10, 11]
        assert h.metrics.outbound_underruns_total == 0


async def test_a_mark_is_reported_once_the_audio_before_it_has_left_the_source() -> None:
    async with running_transport() as h:
        await h.transport.play(_speech(5))
        await h.transport.mark("m")
        await h.transport.play(_speech(5, first=10))
        await h.transport.mark("n")
        m = await h.wait_mark("m")
        n = await h.wait_mark("n")
        assert [r.name for r in h.marks] == ["m", "n"]
        # When "m" comes back its 5 frames were handed over, and all the source still
        # holds is audio handed over after it: the audio before the mark has played.
        assert m.handed >= 5
        assert m.queued_s <= 0.020 * (m.handed - 5) + EPSILON_S
        assert n.handed == 10 and n.queued_s <= EPSILON_S
        # A mark with nothing queued waits for what the source still holds, then returns.
        await h.transport.mark("idle")
        assert (await h.wait_mark("idle")).queued_s <= EPSILON_S


async def test_clear_drops_queued_audio_and_pending_marks() -> None:
    async with running_transport() as h:
        await h.transport.play(_speech(50))  # 1 s
        await h.transport.mark("never")
        await h.wait_for(lambda: len(h.source.captured) >= 5)
        await h.transport.clear()
        assert h.source.queued_duration == 0.0
        handed = len(h.source.captured)
        await asyncio.sleep(0.1)
        assert len(h.source.captured) == handed  # nothing queued was handed over after it
        assert h.source.queued_duration == 0.0
        # The caller heard none of it: not what the source held, nor the frame (numbered
        # `handed`) that was waiting for room when the clear came.
        assert int(h.heard_audio().max()) < handed
        assert h.metrics.outbound_frames_total <= handed
        assert h.marks == []
        # The call goes on: new audio and its mark after the clear.
        await h.transport.play(_speech(2, first=90))
        await h.transport.mark("after")
        assert (await h.wait_mark("after")).name == "after"
        assert np.array_equal(h.source.captured[-1], _speech(2, first=90)[FRAME:])
        assert [m.name for m in h.marks] == ["after"]


async def test_close_stops_the_pacer() -> None:
    async with running_transport(max_queued_ms=100) as h:
        playing = asyncio.create_task(h.transport.play(_speech(50)))
        await asyncio.sleep(0)  # the audio is queued, and `play` waits for room
        await h.transport.mark("never")
        await h.wait_for(lambda: len(h.source.captured) >= 3)
        h.transport.close()
        await asyncio.wait_for(h.task, 10.0)
        await asyncio.wait_for(playing, 10.0)  # a play waiting for room is let go
        handed = len(h.source.captured)
        await h.transport.play(_speech(5))  # after close: nothing waits, nothing is sent
        await asyncio.sleep(0.1)
        assert len(h.source.captured) == handed
        assert h.marks == []


async def test_back_pressure_holds_play_while_too_much_is_queued() -> None:
    async with running_transport(max_queued_ms=100) as h:  # room for 5 frames
        playing = asyncio.create_task(h.transport.play(_speech(12)))
        await asyncio.sleep(0)
        assert not playing.done()
        await asyncio.wait_for(playing, 10.0)
        # It returned once fewer than 5 frames were left in the transport's queue.
        assert len(h.source.captured) >= 12 - 5
        await h.transport.mark("end")
        await h.wait_mark("end")
        assert len(h.source.captured) == 12


async def test_an_underrun_is_counted_when_the_source_runs_dry_mid_speech() -> None:
    async with running_transport() as h:
        await h.transport.play(_speech(2))
        await h.transport.mark("a")
        await h.wait_mark("a")  # the source has run dry
        assert h.metrics.outbound_underruns_total == 0
        await h.transport.play(_speech(1))  # the next audio comes late: a gap was heard
        await h.transport.mark("b")
        await h.wait_mark("b")
        assert h.metrics.outbound_underruns_total == 1
        await h.transport.clear()  # after a barge-in the next audio starts a new stretch
        await h.transport.play(_speech(1))
        await h.transport.mark("c")
        await h.wait_mark("c")
        assert h.metrics.outbound_underruns_total == 1
        assert h.metrics.outbound_frames_total == 4
