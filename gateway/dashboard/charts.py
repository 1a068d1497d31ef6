"""The call page's latency chart: one bar per agent turn, its time from the caller's end
of speech to the first audio sent (`first_frame_out`), laid out for an inline SVG."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage import TurnRecord

WIDTH = 480
HEIGHT = 120
_BAR_GAP = 4
_TOP = 14  # room for the value above the tallest bar
_MAX_BAR = 40  # a call with few answers keeps narrow bars


@dataclass(frozen=True, slots=True)
class Bar:
    turn: int
    ms: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class LatencyChart:
    bars: tuple[Bar, ...]
    max_ms: float
    median_ms: float
    width: int = WIDTH
    height: int = HEIGHT


def latency_chart(turns: Sequence[TurnRecord]) -> LatencyChart | None:
    """The chart of the agent turns that have a measured reply time; None when none has."""
    points = [
        (t.index, t.latency["first_frame_out"])
        for t in turns
        if t.speaker == "agent" and t.latency and "first_frame_out" in t.latency
    ]
    if not points:
        return None
    top = max(ms for _, ms in points) or 1.0
    step = min(WIDTH / len(points), _MAX_BAR + _BAR_GAP)
    width = max(step - _BAR_GAP, 1.0)
    bars = []
    for i, (turn, ms) in enumerate(points):
        height = (HEIGHT - _TOP) * ms / top
        bars.append(Bar(turn, ms, i * step, HEIGHT - height, width, height))
    values = sorted(ms for _, ms in points)
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return LatencyChart(bars=tuple(bars), max_ms=top, median_ms=median)
