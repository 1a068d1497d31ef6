"""The Twilio pacer on a virtual clock: 20 ms media frames on schedule, `lead_ms` ahead,
marks right after their audio, clear, back-pressure, and what the recorder is given."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from audio.codec import ulaw_encode
from audio.frames import PCM16
from gateway.metrics import GatewayMetrics
from gateway.twilio.pacer import TwilioPacer
from telephony.errors import StreamClosed
from telephony.twilio import MediaStreamProtocol, OutboundMedia, StreamSid

START = json.dumps(
    {
        "event": "start",
        "streamSid": "MZ1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)
STOP = '{"event": "stop", "streamSid": "MZ1", "stop": {"callSid": "CA1"}}'
CLEAR = '{"event":"clear","streamSid":"MZ1"}'
T0 = 1000.0
FRAME = 160


async def _settle() -> None:
    """Let every task run until it waits again (nothing here waits on real I/O)."""
    for _ in range(20):
        await asyncio.sleep(0)


class VirtualClock:
    """Monotonic time that moves only when the test says; `sleep` waits for it to move."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking each sleeper at its own time, in order."""
        target = self.now + seconds
        await _settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not future.done():
                future.set_result(None)
            await _settle()
        self.now = target
        await _settle()

    def stall(self, seconds: float) -> None:
        """Time passes and nobody wakes: the event loop was blocked."""
        self.now += seconds


@dataclass
class RecorderDouble:
    """The agent side of a recorder: what it was given, and when it was due to play."""

    audio: list[tuple[float, PCM16]] = field(default_factory=list)
    cleared: list[float] = field(default_factory=list)

    def agent_audio(self, due: float, pcm: PCM16) -> None:
        self.audio.append((due, pcm))

    def agent_cleared(self, at: float) -> None:
        self.cleared.append(at)


@dataclass
class Harness:
    pacer: TwilioPacer
    protocol: MediaStreamProtocol
    clock: VirtualClock
    recorder: RecorderDouble
    metrics: GatewayMetrics
    task: asyncio.Task[None]
    sent: list[tuple[float, str]]  # (virtual time written, text)

    def media(self) -> list[tuple[float, str]]:
        return [(t, text) for t, text in self.sent if '"event":"media"' in text]

    def events(self) -> list[str]:
        """The messages written, as `media` or `mark:<name>` or `clear`."""
        out = []
        for _, text in self.sent:
            message = json.loads(text)
            event = message["event"]
            out.append(f"mark:{message['mark']['name']}" if event == "mark" else event)
        return out


@asynccontextmanager
async def running_pacer(
    *, lead_ms: int = 0, max_queued_ms: int = 2000, socket_gone_after: int | None = None
) -> AsyncIterator[Harness]:
    """A started stream's pacer on a virtual clock; with `socket_gone_after`, the socket is
    gone after that many frames were written (every later write raises, as the driver's)."""
    protocol = MediaStreamProtocol()
    protocol.receive_text(START)
    protocol.events()
    clock = VirtualClock()
    recorder = RecorderDouble()
    metrics = GatewayMetrics()
    sent: list[tuple[float, str]] = []

    async def send_text(text: str) -> None:
        if socket_gone_after is not None and len(sent) >= socket_gone_after:
            raise StreamClosed("media stream socket gone: WebSocketDisconnect")
        sent.append((clock.now, text))

    pacer = TwilioPacer(
        protocol=protocol,
        send_text=send_text,
        metrics=metrics,
        lead_ms=lead_ms,
        max_queued_ms=max_queued_ms,
        recorder=recorder,
        clock=clock,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(pacer.run(), name="pacer")
    try:
        yield Harness(pacer, protocol, clock, recorder, metrics, task, sent)
    finally:
        pacer.close()
        await clock.advance(1.0)  # a pacer asleep on the virtual clock wakes and sees it
        await asyncio.wait_for(task, 1.0)


def _media_text(pcm: PCM16) -> str:
    return OutboundMedia(StreamSid("MZ1"), ulaw_encode(pcm)).serialize()


def _mark_text(name: str) -> str:
    return '{"event":"mark","streamSid":"MZ1","mark":{"name":"' + name + '"}}'


def _speech(frames: float, first: int = 1) -> PCM16:
    """Audio in which every sample says where it is: frame k holds first + k."""
    samples = int(frames * FRAME)
    return (first + np.arange(samples) // FRAME).astype(np.int16)


@pytest.mark.parametrize("lead_ms", [0, 60])
async def test_frames_leave_every_20_ms_of_virtual_time_with_marks_in_order(lead_ms: int) -> None:
    async with running_pacer(lead_ms=lead_ms) as h:
        speech = _speech(10.5)  # 210 ms: 10 whole frames and half of one
        await h.pacer.play(speech)
        await h.pacer.mark("end")
        await h.clock.advance(0.35)
        media = h.media()
        assert len(media) == 11  # 10 whole frames + the padded remainder
        assert h.events() == ["media"] * 11 + ["mark:end"]
        assert h.sent[-1][1] == _mark_text("end")
        padded = np.concatenate([speech[10 * FRAME :], np.zeros(80, dtype=np.int16)])
        frames = [speech[k * FRAME : (k + 1) * FRAME] for k in range(10)] + [padded]
        assert [text for _, text in media] == [_media_text(f) for f in frames]
        # Frame k is due to play at T0 + 20k ms and leaves `lead_ms` before that (never
        # before the audio was there): with a 60 ms lead the first four go at once.
        lead = lead_ms / 1000
        expected = [max(T0, T0 + 0.02 * k - lead) for k in range(11)]
        assert [t for t, _ in media] == pytest.approx(expected)
        assert h.sent[-1][0] == pytest.approx(expected[-1])  # the mark right after its audio
        assert h.pacer.stats.frames_sent == 11 and h.pacer.stats.frames_late == 0
        assert h.pacer.stats.underruns == 0
        assert h.metrics.outbound_frames_total == 11
        # The recorder gets the very PCM that was played, at the time it is due to play.
        assert [due for due, _ in h.recorder.audio] == pytest.approx(
            [T0 + 0.02 * k for k in range(11)]
        )
        assert all(
            np.array_equal(got, want)
            for (_, got), want in zip(h.recorder.audio, frames, strict=True)
        )
        assert len(h.recorder.audio) == 11


async def test_each_mark_follows_the_audio_queued_before_it() -> None:
    async with running_pacer(lead_ms=20) as h:
        await h.pacer.mark("first")  # nothing queued: out at once, no waiting for the pacer
        assert h.events() == ["mark:first"]
        await h.pacer.play(_speech(2))
        await h.pacer.mark("seg-1")
        await h.pacer.play(_speech(1.25, first=50))
        await h.pacer.mark("seg-2")
        await h.pacer.mark("seg-3")
        await h.clock.advance(0.2)
        assert h.events() == [
            "mark:first",
            "media",
            "media",
            "mark:seg-1",
            "media",
            "media",
            "mark:seg-2",
            "mark:seg-3",
        ]
        times = [t for t, _ in h.sent]
        assert times == pytest.approx([T0, T0, T0, T0, T0 + 0.02, T0 + 0.04, T0 + 0.04, T0 + 0.04])
        assert h.protocol.pending_marks == ["first", "seg-1", "seg-2", "seg-3"]


async def test_clear_drops_queued_audio_and_tells_twilio() -> None:
    async with running_pacer() as h:
        await h.pacer.play(np.zeros(8000, dtype=np.int16))  # 1 s queued
        await h.pacer.mark("never-played")
        await h.clock.advance(0.1)
        await h.pacer.clear()
        count = len(h.sent)
        assert h.sent[count - 1] == (T0 + 0.1, CLEAR)
        assert h.recorder.cleared == [T0 + 0.1]
        assert h.protocol.queued_frames == 0
        await h.clock.advance(0.5)
        assert len(h.sent) == count  # nothing more after the clear
        # Frames at 0, 20, ..., 100 ms went out before it; the rest never did.
        assert sum(1 for _, m in h.sent if '"media"' in m) == 6
        assert "mark:never-played" not in h.events()
        # Audio after a clear starts a new schedule at once.
        await h.pacer.play(_speech(1, first=9))
        await h.clock.advance(0.0)
        assert h.sent[-1] == (T0 + 0.6, _media_text(_speech(1, first=9)))


async def test_a_clear_while_the_pacer_waits_drops_the_frame_it_waited_for() -> None:
    async with running_pacer() as h:
        await h.pacer.play(_speech(3))
        await h.clock.advance(0.01)  # frame 0 sent; the pacer waits for frame 1's time
        await h.pacer.clear()
        await h.pacer.play(_speech(1, first=70))
        await h.clock.advance(0.1)
        media = [text for _, text in h.media()]
        assert media == [_media_text(_speech(1)), _media_text(_speech(1, first=70))]
        assert [pcm[0] for _, pcm in h.recorder.audio] == [1, 70]


async def test_late_frames_are_counted_when_the_clock_jumps() -> None:
    async with running_pacer(lead_ms=60) as h:
        await h.pacer.play(_speech(20))
        await h.clock.advance(0.1)  # frames 0-8 sent; frame 9 (due +180 ms) leaves at +120
        assert h.pacer.stats.frames_sent == 9
        h.clock.stall(0.15)  # the loop is blocked until +250 ms
        await h.clock.advance(0.0)
        # Frame 9 goes 70 ms after it was due: late. The schedule restarts from now, so the
        # frames after it are on time again, and the producer was not at fault (no underrun).
        assert h.pacer.stats.frames_late == 1
        assert h.pacer.stats.max_lateness_ms == pytest.approx(70.0)
        assert h.metrics.outbound_frames_late_total == 1
        await h.clock.advance(0.5)
        assert h.pacer.stats.frames_sent == 20
        assert h.pacer.stats.frames_late == 1 and h.pacer.stats.underruns == 0


async def test_an_underrun_is_counted_when_the_audio_comes_too_late() -> None:
    async with running_pacer() as h:
        await h.pacer.play(_speech(2))
        await h.clock.advance(0.1)  # both frames played by +40 ms; the queue ran dry
        await h.pacer.play(_speech(1))  # 60 ms late: the caller heard a gap
        await h.clock.advance(0.1)
        assert h.pacer.stats.underruns == 1 and h.metrics.outbound_underruns_total == 1
        await h.clock.advance(2.0)
        await h.pacer.play(_speech(1))  # a new utterance after a pause is not a gap
        await h.clock.advance(0.1)
        assert h.pacer.stats.underruns == 1 and h.pacer.stats.frames_sent == 4


async def test_back_pressure_holds_play_until_the_queue_drains() -> None:
    async with running_pacer(max_queued_ms=100) as h:  # room for 5 frames
        playing = asyncio.create_task(h.pacer.play(_speech(20)))
        await h.clock.advance(0.29)  # frames 0-14 sent (one every 20 ms), 5 still queued
        assert h.pacer.stats.frames_sent == 15 and not playing.done()
        await h.clock.advance(0.02)  # frame 15 at +300 ms leaves 4 queued: room again
        assert h.pacer.stats.frames_sent == 16 and playing.done()
        await playing
        await h.clock.advance(0.2)
        assert h.pacer.stats.frames_sent == 20


async def test_close_stops_the_pacer_and_releases_play() -> None:
    async with running_pacer(max_queued_ms=100) as h:
        playing = asyncio.create_task(h.pacer.play(_speech(20)))
        await h.clock.advance(0.05)
        h.pacer.close()
        await h.clock.advance(0.05)
        assert h.task.done() and h.task.exception() is None
        assert playing.done()
        count = len(h.sent)
        await h.pacer.play(_speech(20))  # after close, play does not wait
        await h.pacer.mark("late")
        await h.clock.advance(0.5)
        assert len(h.sent) == count == 3


async def test_the_pacer_stops_sending_once_twilio_stops_the_stream() -> None:
    async with running_pacer(max_queued_ms=100) as h:
        playing = asyncio.create_task(h.pacer.play(_speech(20)))
        await h.clock.advance(0.05)
        h.protocol.receive_text(STOP)
        await h.clock.advance(0.05)
        # The pacer task ends quietly: nothing raised, nothing more sent, nobody left waiting.
        assert h.task.done() and h.task.exception() is None
        assert playing.done()
        count = len(h.sent)
        await h.pacer.play(_speech(5))
        await h.pacer.mark("after-stop")
        await h.pacer.clear()
        await h.clock.advance(0.2)
        assert len(h.sent) == count == 3
        assert h.metrics.outbound_dropped_after_stop_total == 3


async def test_the_session_is_never_raised_at_when_stop_comes_while_play_waits() -> None:
    """Hang-up mid-sentence: `play` waits for room when `stop` arrives; the rest of the
    reply (its next audio, its mark, a clear) is dropped at the pacer, not raised."""
    async with running_pacer(max_queued_ms=100) as h:
        playing = asyncio.create_task(h.pacer.play(_speech(50)))
        await h.clock.advance(0.1)
        assert not playing.done()
        h.protocol.receive_text(STOP)
        await h.clock.advance(0.02)
        await playing
        await h.pacer.play(_speech(50))
        await h.pacer.mark("sentence-2")
        await h.pacer.clear()
        assert h.task.done() and h.task.exception() is None
        assert "mark:sentence-2" not in h.events() and "clear" not in h.events()
        assert h.metrics.outbound_dropped_after_stop_total == 3


async def test_a_socket_gone_without_stop_stops_the_pacer_quietly() -> None:
    """The socket drops (or closes right behind `stop`) while frames are written: the
    pacer ends without an exception and the session's calls do not raise."""
    async with running_pacer(max_queued_ms=100, socket_gone_after=4) as h:
        playing = asyncio.create_task(h.pacer.play(_speech(20)))
        await h.clock.advance(0.2)
        assert h.task.done() and h.task.exception() is None
        assert playing.done() and playing.exception() is None
        assert not h.protocol.open and h.protocol.queued_frames == 0
        await h.pacer.mark("after-the-socket")  # would write at once: dropped instead
        await h.pacer.clear()
        await h.pacer.play(_speech(5))
        assert len(h.sent) == 4
        assert h.metrics.outbound_dropped_after_stop_total == 3


async def test_a_pause_holds_the_queued_audio_and_resume_plays_it_on() -> None:
    async with running_pacer() as h:
        await h.pacer.play(_speech(10))
        await h.clock.advance(0.05)
        await h.pacer.pause()
        sent = len(h.media())
        assert 0 < sent < 10
        await h.clock.advance(0.5)
        assert len(h.media()) == sent  # nothing sent while paused ...
        assert h.protocol.queued_frames == 10 - sent  # ... and nothing dropped
        assert CLEAR not in [text for _, text in h.sent]
        await h.pacer.resume()
        await h.clock.advance(0.3)
        media = [text for _, text in h.media()]
        assert media == [_media_text(_speech(1, first=k + 1)) for k in range(10)]
        # A new schedule from the resume, and the pause was no underrun.
        assert h.media()[sent][0] == T0 + 0.55
        assert h.pacer.stats.underruns == 0
        assert [pcm[0] for _, pcm in h.recorder.audio] == list(range(1, 11))


async def test_a_clear_ends_a_pause() -> None:
    async with running_pacer() as h:
        await h.pacer.play(_speech(10))
        await h.clock.advance(0.01)
        await h.pacer.pause()
        await h.pacer.clear()
        await h.pacer.play(_speech(1, first=50))
        await h.clock.advance(0.1)
        assert h.media()[-1][1] == _media_text(_speech(1, first=50))
