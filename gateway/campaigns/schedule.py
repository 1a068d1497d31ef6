"""A campaign's calling window, pure: whether an instant is inside it for a contact, and
when it next opens (the dialer holds a contact until then).

A window is `start_at`..`end_at` (instants; either may be absent), on the `days` of the
week (`mon`..`sun`), between `hours` (`"09:00"`, `"17:00"`: local wall-clock time, start
included, end excluded) in a time zone: the contact's when it has one, else the
campaign's. Wall-clock hours follow DST through `zoneinfo`: on a day whose start time
does not exist (the clocks jump over it) the window opens at the jump; on a day it exists
twice, at its first occurrence. `hours` with an end before its start runs overnight (the
day named is the one it opens on); `"24:00"` as the end is midnight at the end of the day;
equal hours never open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # `date.weekday()` order


class Window(Protocol):
    """What a campaign's schedule says (`storage.Schedule`)."""

    @property
    def start_at(self) -> datetime | None: ...
    @property
    def end_at(self) -> datetime | None: ...
    @property
    def time_zone(self) -> str: ...
    @property
    def days(self) -> Sequence[str]: ...
    @property
    def hours(self) -> Sequence[str]: ...


def parse_hour(text: str) -> time | None:
    """`"HH:MM"` as a time; `"24:00"` is None (midnight at the end of the day)."""
    hh, sep, mm = text.partition(":")
    if not sep or not (hh + mm).isdigit() or len(hh) != 2 or len(mm) != 2:
        raise ValueError(f"hour {text!r} is not HH:MM")
    h, m = int(hh), int(mm)
    if (h, m) == (24, 0):
        return None
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(f"hour {text!r} is not HH:MM")
    return time(h, m)


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (`ValueError` if unknown)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _local(day: date, at: time | None, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of wall-clock `at` on `day` in `tz` (None: the next midnight); a
    wall time the clocks jumped over is the instant of the jump."""
    if at is None:
        day, at = day + timedelta(days=1), time(0, 0)
    wall = datetime.combine(day, at, tzinfo=tz)
    instant = wall.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != wall.replace(tzinfo=None):
        # Not a wall time that exists: fold=0 read it with the offset before the jump,
        # which lands after it; the jump itself is the first existing instant after.
        instant = _jump_before(instant, tz)
    return instant


def _jump_before(instant: datetime, tz: ZoneInfo) -> datetime:
    """The last UTC offset change of `tz` at or before `instant` (within a day)."""
    low, high = instant - timedelta(days=1), instant
    base = low.astimezone(tz).utcoffset()
    if instant.astimezone(tz).utcoffset() == base:
        return instant
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(tz).utcoffset() == base:
            low = mid
        else:
            high = mid
    return high.replace(microsecond=0)


def _spans(window: Window, tz: ZoneInfo, around: datetime) -> list[tuple[datetime, datetime]]:
    """The daily spans [open, close) (UTC) that open from the day before `around` (local)
    to eight days after it, in order."""
    start, end = parse_hour(window.hours[0]), parse_hour(window.hours[1])
    if start is None or start == end:
        return []
    overnight = end is not None and end < start
    days = {d.lower() for d in window.days}
    first = around.astimezone(tz).date() - timedelta(days=1)
    spans = []
    for k in range(10):
        day = first + timedelta(days=k)
        if DAYS[day.weekday()] not in days:
            continue
        opens = _local(day, start, tz)
        closes = _local(day + timedelta(days=1) if overnight else day, end, tz)
        if closes > opens:
            spans.append((opens, closes))
    return spans


def next_open(window: Window, at: datetime, time_zone: str | None = None) -> datetime | None:
    """`at` if it is inside the window (in `time_zone` if given, else the window's), else
    the first instant after it that is, or None if the window never opens again."""
    tz = zone(time_zone or window.time_zone)
    at = at.astimezone(UTC)
    t = at
    if window.start_at is not None and t < window.start_at:
        t = window.start_at.astimezone(UTC)
    end_at = window.end_at.astimezone(UTC) if window.end_at is not None else None
    for _ in range(60):  # a week of days at a time; bounded for a window that never opens
        if end_at is not None and t >= end_at:
            return None
        spans = _spans(window, tz, t)
        if not spans:  # no day, or hours that never open
            return None
        for opens, closes in spans:
            if closes <= t:
                continue
            found = max(opens, t)
            return None if end_at is not None and found >= end_at else found
        t = spans[-1][1]
    return None


def inside(window: Window, at: datetime, time_zone: str | None = None) -> bool:
    """Whether `at` is inside the window (for a contact in `time_zone`, when given)."""
    return next_open(window, at, time_zone) == at.astimezone(UTC)


def closes_at(window: Window, at: datetime, time_zone: str | None = None) -> datetime | None:
    """When the span `at` is in closes (None: `at` is outside the window)."""
    if not inside(window, at, time_zone):
        return None
    tz = zone(time_zone or window.time_zone)
    at = at.astimezone(UTC)
    for opens, closes in _spans(window, tz, at):
        if opens <= at < closes:
            end_at = window.end_at
            return min(closes, end_at.astimezone(UTC)) if end_at is not None else closes
    return None


def can_open(window: Window, *, now: datetime) -> bool:
    """Whether the window opens at all from `now` on: a known zone, valid hours that
    differ, a day, and some span before `end_at` (a schedule that cannot is refused when
    the campaign is created)."""
    try:
        zone(window.time_zone)
        start, end = parse_hour(window.hours[0]), parse_hour(window.hours[1])
    except (ValueError, IndexError):
        return False
    if start is None or start == end or not any(d.lower() in DAYS for d in window.days):
        return False
    return next_open(window, now) is not None
