"""The dialer's clocks: the file a test rewrites to move a running gateway's time."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.campaigns.clock import FakeClock, FileClock, SystemClock, parse_clock_file

T0 = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)


def test_clock_file_offset_and_absolute() -> None:
    assert parse_clock_file("+3600\n", written_at=T0) == timedelta(hours=1)
    assert parse_clock_file("-90.5", written_at=T0) == timedelta(seconds=-90.5)
    assert parse_clock_file("", written_at=T0) == timedelta(0)
    at = "2026-06-04T09:00:00-04:00"
    assert parse_clock_file(at, written_at=T0) == datetime.fromisoformat(at) - T0
    with pytest.raises(ValueError):
        parse_clock_file("2026-06-04T09:00:00", written_at=T0)  # no zone


def test_file_clock_follows_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    clock = FileClock(path)
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)  # no file: real
    path.write_text("2030-01-01T00:00:00+00:00")
    assert abs(clock.now() - datetime(2030, 1, 1, tzinfo=UTC)) < timedelta(seconds=5)
    path.write_text("+86400")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000))  # a new mtime, surely
    assert abs(clock.now() - (datetime.now(UTC) + timedelta(days=1))) < timedelta(seconds=5)
    path.write_text("not a time")
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 2_000_000))
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=5)


def test_fake_clock_moves_only_forward() -> None:
    clock = FakeClock(T0)
    clock.advance(90)
    assert clock.now() == T0 + timedelta(seconds=90) and clock.monotonic() == 90
    clock.set(T0 + timedelta(hours=2))
    assert clock.monotonic() == 7200
    with pytest.raises(ValueError):
        clock.set(T0)
    assert SystemClock().now().tzinfo is not None
