"""A campaign's calling window: days, hours, zones (the contact's over the campaign's), DST
days in both directions, midnight, overnight hours, start_at / end_at."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.campaigns.schedule import can_open, closes_at, inside, next_open, parse_hour

NY = ZoneInfo("America/New_York")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


@dataclass(frozen=True)
class W:
    time_zone: str = "America/New_York"
    days: tuple[str, ...] = WEEKDAYS
    hours: tuple[str, str] = ("09:00", "17:00")
    start_at: datetime | None = None
    end_at: datetime | None = None


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[arg-type,misc]


def test_inside_and_the_edges() -> None:
    w = W()
    assert inside(w, ny(2026, 6, 3, 9, 0))  # a Wednesday, the first minute
    assert inside(w, ny(2026, 6, 3, 16, 59, 59))
    assert not inside(w, ny(2026, 6, 3, 17, 0))  # the end is excluded
    assert not inside(w, ny(2026, 6, 3, 8, 59, 59))
    assert next_open(w, ny(2026, 6, 3, 12, 0)) == ny(2026, 6, 3, 12, 0).astimezone(UTC)


def test_next_open_later_today_tomorrow_and_after_the_weekend() -> None:
    w = W()
    assert next_open(w, ny(2026, 6, 3, 7, 30)) == ny(2026, 6, 3, 9, 0)
    assert next_open(w, ny(2026, 6, 3, 17, 0)) == ny(2026, 6, 4, 9, 0)
    assert next_open(w, ny(2026, 6, 5, 18, 0)) == ny(2026, 6, 8, 9, 0)  # Friday -> Monday
    assert next_open(w, ny(2026, 6, 6, 12, 0)) == ny(2026, 6, 8, 9, 0)  # Saturday


def test_the_contacts_zone_wins_over_the_campaigns() -> None:
    w = W()
    at = ny(2026, 6, 3, 10, 0)  # 10:00 in New York is 07:00 in Los Angeles
    assert inside(w, at)
    assert not inside(w, at, "America/Los_Angeles")
    la = ZoneInfo("America/Los_Angeles")
    assert next_open(w, at, "America/Los_Angeles") == datetime(2026, 6, 3, 9, 0, tzinfo=la)
    # Tokyo: already Thursday 00:00 -> Thursday 09:00 there.
    tokyo = ZoneInfo("Asia/Tokyo")
    assert next_open(w, ny(2026, 6, 3, 11, 0), "Asia/Tokyo") == datetime(
        2026, 6, 4, 9, 0, tzinfo=tokyo
    )


def test_spring_forward_keeps_wall_clock_hours() -> None:
    # 2026-03-08: New York's clocks go 02:00 EST -> 03:00 EDT.
    w = W(days=("sun", "mon"), hours=("09:00", "17:00"))
    opens = next_open(w, datetime(2026, 3, 8, 0, 0, tzinfo=UTC))
    assert opens == ny(2026, 3, 8, 9, 0)
    assert opens == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)  # EDT: UTC-4
    saturday = next_open(W(days=("sat",)), datetime(2026, 3, 7, 0, 0, tzinfo=UTC))
    assert saturday == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # EST: UTC-5


def test_a_start_hour_the_clocks_jump_over_opens_at_the_jump() -> None:
    w = W(days=("sun",), hours=("02:30", "04:00"))
    opens = next_open(w, datetime(2026, 3, 8, 0, 0, tzinfo=UTC))
    assert opens == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT, the jump
    assert closes_at(w, opens) == ny(2026, 3, 8, 4, 0)  # 08:00 UTC: an hour long


def test_fall_back_day_is_an_hour_longer_overnight() -> None:
    # 2026-11-01: 02:00 EDT -> 01:00 EST. 00:00-04:00 spans five real hours.
    w = W(days=("sun",), hours=("00:00", "04:00"))
    opens = next_open(w, datetime(2026, 11, 1, 0, 0, tzinfo=UTC))
    assert opens is not None
    closes = closes_at(w, opens)
    assert closes is not None
    assert closes - opens == timedelta(hours=5)


def test_midnight_and_overnight_hours() -> None:
    until_midnight = W(days=("wed",), hours=("20:00", "24:00"))
    assert inside(until_midnight, ny(2026, 6, 3, 23, 59))
    assert not inside(until_midnight, ny(2026, 6, 4, 0, 0))
    assert closes_at(until_midnight, ny(2026, 6, 3, 21, 0)) == ny(2026, 6, 4, 0, 0)
    overnight = W(days=("fri",), hours=("22:00", "06:00"))
    assert inside(overnight, ny(2026, 6, 6, 5, 59))  # Saturday morning: Friday's night
    assert not inside(overnight, ny(2026, 6, 7, 5, 0))  # Sunday morning: Saturday opened none
    assert next_open(overnight, ny(2026, 6, 6, 6, 0)) == ny(2026, 6, 12, 22, 0)


def test_start_at_and_end_at() -> None:
    w = W(start_at=ny(2026, 6, 10, 12, 0), end_at=ny(2026, 6, 11, 10, 0))
    assert next_open(w, ny(2026, 6, 3, 12, 0)) == ny(2026, 6, 10, 12, 0)
    assert next_open(w, ny(2026, 6, 10, 17, 30)) == ny(2026, 6, 11, 9, 0)
    assert closes_at(w, ny(2026, 6, 11, 9, 30)) == ny(2026, 6, 11, 10, 0)  # end_at first
    assert next_open(w, ny(2026, 6, 11, 10, 0)) is None  # over
    assert next_open(W(end_at=ny(2026, 6, 6, 12, 0)), ny(2026, 6, 5, 18, 0)) is None


def test_schedules_that_never_open() -> None:
    now = ny(2026, 6, 3, 12, 0)
    assert can_open(W(), now=now)
    assert not can_open(W(hours=("09:00", "09:00")), now=now)
    assert not can_open(W(days=()), now=now)
    assert not can_open(W(time_zone="Mars/Olympus"), now=now)
    assert not can_open(W(hours=("9", "17:00")), now=now)
    assert not can_open(W(start_at=ny(2026, 6, 5), end_at=ny(2026, 6, 4)), now=now)
    # Only a weekend between start and end, and weekdays only: never.
    assert not can_open(W(start_at=ny(2026, 6, 6), end_at=ny(2026, 6, 7, 23)), now=now)
    assert next_open(W(days=()), now) is None


@pytest.mark.parametrize("text", ["9:00", "25:00", "12:60", "noon", "12-00"])
def test_bad_hours(text: str) -> None:
    with pytest.raises(ValueError):
        parse_hour(text)
