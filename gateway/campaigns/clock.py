"""The dialer's clock: what time it is for every schedule decision (windows, backoffs), and
the monotonic seconds that space dials, injectable so a day-long campaign runs in seconds.

- `SystemClock`: the machine's time.
- `FileClock` (the `CAMPAIGN_CLOCK_FILE` setting; for tests and demos only): the time a
  file says, so a test can jump a running gateway's time. The file holds either an offset
  in seconds from the machine's time (`+3600`, `-90.5`) or an ISO 8601 instant with a zone
  (`2026-06-01T16:59:00+00:00`): the time is then that instant plus the seconds since the
  file was written (its mtime). It is read again only when its mtime changes (one `stat`
  per reading); a missing or unreadable file means the machine's time.
- `FakeClock`: moved by its test (`advance`); dial spacing follows it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Time for the dialer: `now()` (aware, UTC) decides windows and backoffs; `monotonic()`
    and `sleep()` space dials (`calls_per_second`) and bound waits."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FileClock:
    """The time `path` says (see the module docstring); dial spacing stays real."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime_ns: int | None = None
        self._offset = timedelta(0)  # what to add to the machine's time

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
        except OSError:
            self._mtime_ns, self._offset = None, timedelta(0)
            return
        if stat.st_mtime_ns == self._mtime_ns:
            return
        self._mtime_ns = stat.st_mtime_ns
        try:
            self._offset = parse_clock_file(
                self._path.read_text(encoding="utf-8"),
                written_at=datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC),
            )
        except (OSError, ValueError) as exc:
            log.warning("campaign clock file not understood (%s): machine time", exc)
            self._offset = timedelta(0)

    def now(self) -> datetime:
        self._refresh()
        return datetime.now(UTC) + self._offset

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def parse_clock_file(text: str, *, written_at: datetime) -> timedelta:
    """What a clock file's `text` adds to the machine's time: an offset in seconds, or an
    aware ISO 8601 instant that was the time when the file was written (`written_at`)."""
    text = text.strip()
    if not text:
        return timedelta(0)
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"the clock file's time {text!r} has no zone")
    return at - written_at


class FakeClock:
    """A clock its test moves: `advance(seconds)` moves both the time and dial spacing, and
    wakes the sleepers whose time came."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock takes an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._mono + seconds, woken))
        await woken

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        due = [(t, f) for t, f in self._sleepers if t <= self._mono]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self._mono]
        for _, woken in due:
            if not woken.done():
                woken.set_result(None)

    def set(self, at: datetime) -> None:
        """Jump to `at` (forward only: monotonic time never goes back)."""
        delta = (at - self._now).total_seconds()
        if delta < 0:
            raise ValueError("a FakeClock only moves forward")
        self.advance(delta)


def clock_from_file(path: str | None) -> Clock:
    """`FileClock(path)` when a clock file is configured, else `SystemClock()`."""
    return FileClock(Path(path)) if path else SystemClock()
