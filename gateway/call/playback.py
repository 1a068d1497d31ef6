"""Tracks which parts of the agent's speech the caller has actually heard.

Each spoken chunk (a sentence) is a segment closed by a mark. A segment counts as heard
when its mark comes back; the segment playing at a barge-in is cut in proportion to the
time it had been playing, so the transcript keeps only what reached the caller's ear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Segment:
    mark: str
    text: str
    samples: int = 0
    closed: bool = False
    played: bool = False


@dataclass(slots=True)
class PlaybackTracker:
    """Segments of one agent turn, their marks and how much of them has been played."""

    rate: int
    clock: Callable[[], float]
    prefix: str = "seg"
    _segments: list[_Segment] = field(default_factory=list)
    _counter: int = 0
    # When the segment now at the head of the unplayed queue started playing.
    _head_started_at: float | None = None
    _paused_at: float | None = None  # playback is held (the caller speaks over the agent)
    _all_played: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._all_played.set()

    def begin_segment(self, text: str) -> str:
        """Open a segment for `text` and return the mark name that will close it."""
        self._counter += 1
        mark = f"{self.prefix}-{self._counter}"
        self._segments.append(_Segment(mark=mark, text=text))
        self._all_played.clear()
        return mark

    def add_audio(self, samples: int) -> None:
        """Count `samples` of audio handed to the transport for the open segment."""
        segment = self._segments[-1]
        segment.samples += samples
        if self._head_started_at is None:
            self._head_started_at = self._now()

    def close_segment(self) -> None:
        self._segments[-1].closed = True

    def mark_played(self, name: str) -> bool:
        """Record that the mark `name` came back; False if it is not one of ours."""
        for segment in self._segments:
            if segment.mark == name and not segment.played:
                segment.played = True
                self._head_started_at = self._now() if self._unplayed() else None
                if not self._unplayed():
                    self._all_played.set()
                return True
        return False

    def pause(self) -> None:
        """Playback is held: the playing segment's clock stops until `resume()`."""
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        """Playback goes on: the playing segment's clock runs again."""
        if self._paused_at is not None:
            if self._head_started_at is not None:
                self._head_started_at += self.clock() - self._paused_at
            self._paused_at = None

    def _now(self) -> float:
        """Playback time: the clock, stopped while playback is held."""
        return self._paused_at if self._paused_at is not None else self.clock()

    def _unplayed(self) -> list[_Segment]:
        return [s for s in self._segments if not s.played]

    @property
    def playing(self) -> bool:
        """True while some agent audio has been sent and not yet confirmed played."""
        return any(s.samples > 0 and not s.played for s in self._segments)

    async def wait_all_played(self) -> None:
        await self._all_played.wait()

    def full_text(self) -> str:
        return " ".join(s.text for s in self._segments if s.text)

    def heard_text(self) -> str:
        """The text the caller heard: played segments plus the played share of the next one."""
        heard = [s.text for s in self._segments if s.played and s.text]
        head = next((s for s in self._segments if not s.played), None)
        if head is not None and head.samples > 0 and self._head_started_at is not None:
            played_s = max(0.0, self._now() - self._head_started_at)
            fraction = min(1.0, played_s * self.rate / head.samples)
            words = head.text.split()
            partial = " ".join(words[: int(len(words) * fraction)])
            if partial:
                heard.append(partial)
        return " ".join(heard)

    def reset(self) -> None:
        """Forget every segment (after the turn is stored or cleared)."""
        self._segments.clear()
        self._head_started_at = None
        self._paused_at = None
        self._all_played.set()
