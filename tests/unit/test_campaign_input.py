"""Whether a campaign's schedule can ever open (`can_open`, the dialer's own judge), and
reading contact uploads (`read_csv`, `read_json`, `check_rows`) without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.api.contact_upload import check_rows, read_csv, read_json, required_placeholders
from gateway.call.records import CallInputLimits
from gateway.campaigns.schedule import can_open
from gateway.errors import BadRequest, RequestInvalid
from storage import AssistantConfig, Schedule

NOW = datetime(2031, 1, 1, 12, 0, tzinfo=UTC)  # a Wednesday
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
LIMITS = CallInputLimits(metadata_max_bytes=1024, metadata_max_keys=8, prompt_max_chars=200)
CONFIG = AssistantConfig(name="A", system_prompt="Hi {{name}} ({{to_number}}).", greeting="Hello.")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_window_opens_when_some_hours_of_its_days_fall_in_its_span() -> None:
    paris = Schedule(time_zone="Europe/Paris", days=WEEKDAYS, hours=("09:00", "17:00"))
    assert can_open(paris, now=NOW)
    # Saturday 08:00-12:00 only: a weekday campaign never opens.
    weekend = Schedule(
        time_zone="Europe/Paris",
        days=WEEKDAYS,
        hours=("09:00", "17:00"),
        start_at=_at("2031-01-04T08:00:00+01:00"),
        end_at=_at("2031-01-04T12:00:00+01:00"),
    )
    assert not can_open(weekend, now=NOW)
    # Friday 16:59 Paris to Monday 09:00: one minute on Friday.
    friday = Schedule(
        time_zone="Europe/Paris",
        days=WEEKDAYS,
        hours=("09:00", "17:00"),
        start_at=_at("2031-01-03T16:59:00+01:00"),
        end_at=_at("2031-01-06T09:00:00+01:00"),
    )
    assert can_open(friday, now=NOW)
    # The same from 17:00: closed all along (Monday opens at the end).
    assert not can_open(
        Schedule(
            time_zone="Europe/Paris",
            days=WEEKDAYS,
            hours=("09:00", "17:00"),
            start_at=_at("2031-01-03T17:00:00+01:00"),
            end_at=_at("2031-01-06T09:00:00+01:00"),
        ),
        now=NOW,
    )
    assert not can_open(Schedule(time_zone="UTC", end_at=_at("2030-12-31T00:00:00+00:00")), now=NOW)
    assert not can_open(Schedule(time_zone="UTC", days=()), now=NOW)
    assert not can_open(Schedule(time_zone="UTC", hours=("10:00", "10:00")), now=NOW)
    assert can_open(Schedule(time_zone="UTC", days=("sun",), hours=("23:00", "24:00")), now=NOW)
    # An overnight window (22:00 to 06:00) opens on the days named.
    assert can_open(Schedule(time_zone="UTC", days=("fri",), hours=("22:00", "06:00")), now=NOW)


def test_csv_rows_are_read_with_their_line_numbers() -> None:
    body = b'to_number,name\n+15550000001,"two\nlines"\n\n+15550000002,Bo\n+1555,x,extra\n'
    rows = list(read_csv(body))
    assert [(r.row, r.to_number, dict(r.metadata), r.problem) for r in rows] == [
        (2, "+15550000001", {"name": "two\nlines"}, None),
        (5, "+15550000002", {"name": "Bo"}, None),
        (6, "", {}, "has 3 fields, the header has 2"),
    ]
    with pytest.raises(RequestInvalid, match="to_number"):
        list(read_csv(b"number,name\n"))
    with pytest.raises(RequestInvalid, match="more than once"):
        list(read_csv(b"to_number,name,name\n"))
    with pytest.raises(BadRequest, match="UTF-8"):
        list(read_csv(b"to_number,name\n+15550000001,\xff\n"))
    with pytest.raises(RequestInvalid):
        list(read_json(b'{"to_number": "+15550000001"}'))


def test_rows_are_checked_and_reported_together() -> None:
    required = required_placeholders(CONFIG)
    assert required == {"name"}  # to_number is the call's own
    rows = read_json(
        b'[{"to_number": "+1 555 000 0001", "metadata": {"name": "A"}},'
        b' {"to_number": "0044", "metadata": {}, "time_zone": "Nowhere"},'
        b' {"to_number": "+15550000001", "metadata": {"name": "' + b"x" * 300 + b'"}}]'
    )
    checked = check_rows(
        rows, required=required, existing=set(), limits=LIMITS, config=CONFIG, from_number="+1"
    )
    assert checked.total == 3 and checked.accepted[0].to_number == "+15550000001"
    reasons = {r["row"]: r["reason"] for r in checked.rejected}
    assert set(reasons) == {1, 2}
    assert "not E.164" in reasons[1] and "Nowhere" in reasons[1] and "{{name}}" in reasons[1]
    assert "also in row 0" in reasons[2] and "system_prompt filled" in reasons[2]
