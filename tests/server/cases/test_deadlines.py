"""Handling deadlines: working hours, working days, natural days, holidays, swapped weekends, DST."""

from __future__ import annotations

from contextlib import nullcontext as does_not_raise
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from curbwatch.server.cases.deadlines import (
    DeadlineError,
    LimitUnit,
    TimeLimit,
    TimeLimitTable,
    WorkCalendar,
    deadline,
    is_overdue,
)

SH = ZoneInfo("Asia/Shanghai")
CAL = WorkCalendar(
    timezone="Asia/Shanghai",
    # Labour Day 2025: 1-5 May off, Sunday 27 April worked in exchange.
    holidays=frozenset(date(2025, 5, d) for d in range(1, 6)),
    extra_working_days=frozenset({date(2025, 4, 27)}),
)


def sh(*args: int) -> datetime:
    """A Shanghai wall-clock instant."""
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


def limit(unit: str, amount: float) -> TimeLimit:
    return TimeLimit(unit=LimitUnit(unit), amount=amount)


# 2025-05-06 is a Tuesday, 2025-05-09 a Friday.
CASES = [
    pytest.param(sh(2025, 5, 6, 9), limit("working_hours", 2), sh(2025, 5, 6, 11), id="inside-morning"),
    pytest.param(sh(2025, 5, 6, 11), limit("working_hours", 2), sh(2025, 5, 6, 15), id="across-lunch"),
    pytest.param(sh(2025, 5, 6, 12, 30), limit("working_hours", 1), sh(2025, 5, 6, 15), id="start-in-lunch"),
    pytest.param(sh(2025, 5, 6, 17), limit("working_hours", 4), sh(2025, 5, 7, 11), id="across-night"),
    pytest.param(sh(2025, 5, 6, 22), limit("working_hours", 0.5), sh(2025, 5, 7, 8, 30), id="start-at-night"),
    pytest.param(sh(2025, 5, 6, 16), limit("working_hours", 2), sh(2025, 5, 6, 18), id="ends-at-period-end"),
    pytest.param(sh(2025, 5, 9, 17), limit("working_hours", 4), sh(2025, 5, 12, 11), id="friday-to-monday"),
    pytest.param(sh(2025, 5, 9, 19), limit("working_hours", 1), sh(2025, 5, 12, 9), id="friday-night"),
    pytest.param(sh(2025, 5, 6, 10), limit("working_hours", 16), sh(2025, 5, 8, 10), id="two-full-days"),
    pytest.param(sh(2025, 4, 30, 17), limit("working_hours", 2), sh(2025, 5, 6, 9), id="over-holiday"),
    pytest.param(sh(2025, 4, 25, 17), limit("working_hours", 2), sh(2025, 4, 27, 9), id="swapped-sunday"),
    pytest.param(sh(2025, 5, 9, 16), limit("working_days", 1), sh(2025, 5, 12, 16), id="1-working-day"),
    pytest.param(sh(2025, 5, 10, 10), limit("working_days", 1), sh(2025, 5, 12, 18), id="wd-from-saturday"),
    pytest.param(sh(2025, 4, 29, 9), limit("working_days", 3), sh(2025, 5, 7, 9), id="wd-over-holiday"),
    pytest.param(sh(2025, 5, 9, 17), limit("natural_days", 1), sh(2025, 5, 10, 17), id="natural-day"),
    pytest.param(sh(2025, 4, 30, 17), limit("natural_days", 3), sh(2025, 5, 3, 17), id="natural-in-holiday"),
    pytest.param(sh(2025, 5, 9, 23), limit("continuous_hours", 2), sh(2025, 5, 10, 1), id="continuous"),
]


@pytest.mark.parametrize(("start", "time_limit", "expected"), CASES)
def test_deadline(start: datetime, time_limit: TimeLimit, expected: datetime) -> None:
    due = deadline(start, time_limit, CAL)
    assert due == expected
    assert due.tzinfo == SH


def test_start_in_other_zone_is_converted() -> None:
    start = datetime(2025, 5, 6, 1, tzinfo=UTC)  # 09:00 in Shanghai
    assert deadline(start, limit("working_hours", 2), CAL) == sh(2025, 5, 6, 11)


def test_extra_working_saturday() -> None:
    cal = WorkCalendar(timezone="Asia/Shanghai", extra_working_days=frozenset({date(2025, 9, 28)}))
    # 2025-09-26 is a Friday; Sunday 28 September is worked before National Day.
    assert deadline(sh(2025, 9, 26, 17), limit("working_hours", 3), cal) == sh(2025, 9, 28, 10)
    plain = WorkCalendar(timezone="Asia/Shanghai")
    assert deadline(sh(2025, 9, 26, 17), limit("working_hours", 3), plain) == sh(2025, 9, 29, 10)


NY = ZoneInfo("America/New_York")
NY_CAL = WorkCalendar(timezone="America/New_York")


def test_dst_spring_forward() -> None:
    # Clocks go 02:00 -> 03:00 on Sunday 9 March 2025.
    start = datetime(2025, 3, 8, 10, tzinfo=NY)
    natural = deadline(start, limit("natural_days", 1), NY_CAL)
    assert natural == datetime(2025, 3, 9, 10, tzinfo=NY)
    # Same-tzinfo subtraction is wall-clock in Python, so compare in UTC.
    assert natural.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=23)
    continuous = deadline(start, limit("continuous_hours", 24), NY_CAL)
    assert continuous.replace(tzinfo=None) == datetime(2025, 3, 9, 11)
    assert continuous.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=24)
    # Friday 17:00 EST + 2 working hours lands on Monday 09:00 EDT: the lost hour is not working time.
    friday = datetime(2025, 3, 7, 17, tzinfo=NY)
    due = deadline(friday, limit("working_hours", 2), NY_CAL)
    assert due == datetime(2025, 3, 10, 9, tzinfo=NY)
    assert due.utcoffset() == timedelta(hours=-4)


def test_dst_fall_back_natural_day_is_25_hours() -> None:
    start = datetime(2025, 11, 1, 12, tzinfo=NY)
    due = deadline(start, limit("natural_days", 1), NY_CAL)
    assert due.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)


def test_night_shift_calendar_across_dst_gap() -> None:
    cal = WorkCalendar(
        timezone="America/New_York",
        working_weekdays=frozenset(range(1, 8)),
        working_periods=({"start": time(1), "end": time(4)},),  # type: ignore[arg-type]
    )
    # 01:00-04:00 on 9 March is only two real hours long.
    start = datetime(2025, 3, 9, 1, tzinfo=NY)
    assert deadline(start, limit("working_hours", 2), cal) == datetime(2025, 3, 9, 4, tzinfo=NY)
    assert deadline(start, limit("working_hours", 2.5), cal) == datetime(2025, 3, 10, 1, 30, tzinfo=NY)


@pytest.mark.parametrize(
    ("at", "expected"),
    [(sh(2025, 5, 6, 14, 59), False), (sh(2025, 5, 6, 15), False), (sh(2025, 5, 6, 15, 0, 1), True)],
)
def test_is_overdue(at: datetime, expected: bool) -> None:
    assert is_overdue(sh(2025, 5, 6, 11), limit("working_hours", 2), CAL, at=at) is expected


def test_naive_times_are_refused() -> None:
    with pytest.raises(DeadlineError, match="timezone-aware"):
        deadline(datetime(2025, 5, 6, 9), limit("working_hours", 1), CAL)
    with pytest.raises(DeadlineError, match="timezone-aware"):
        is_overdue(sh(2025, 5, 6, 9), limit("working_hours", 1), CAL, at=datetime(2025, 5, 6, 9))


def test_calendar_without_working_time_fails_fast() -> None:
    cal = WorkCalendar(timezone="UTC", working_weekdays=frozenset({1}))
    everything_off = WorkCalendar(
        timezone="UTC",
        working_weekdays=frozenset({1}),
        holidays=frozenset(date(2025, 1, 6) + timedelta(weeks=w) for w in range(600)),
    )
    assert deadline(datetime(2025, 1, 7, tzinfo=UTC), limit("working_hours", 1), cal).day == 13
    with pytest.raises(DeadlineError, match="no working time"):
        deadline(datetime(2025, 1, 1, tzinfo=UTC), limit("working_hours", 1), everything_off)


CONFIG_ROWS = [
    (TimeLimit, {"unit": "working_hours", "amount": 4}, does_not_raise()),
    (TimeLimit, {"unit": "working_hours", "amount": 0}, pytest.raises(ValidationError)),
    (TimeLimit, {"unit": "working_days", "amount": 1.5}, pytest.raises(ValidationError, match="whole")),
    (TimeLimit, {"unit": "fortnights", "amount": 1}, pytest.raises(ValidationError)),
    (TimeLimit, {"unit": "natural_days", "amount": 2, "x": 1}, pytest.raises(ValidationError)),
    (WorkCalendar, {"timezone": "Asia/Shanghai"}, does_not_raise()),
    (WorkCalendar, {"timezone": "Mars/Olympus"}, pytest.raises(ValidationError, match="unknown time zone")),
    (WorkCalendar, {"timezone": "UTC", "working_weekdays": [0, 1]}, pytest.raises(ValidationError)),
    (WorkCalendar, {"timezone": "UTC", "working_weekdays": []}, pytest.raises(ValidationError)),
    (
        WorkCalendar,
        {
            "timezone": "UTC",
            "working_periods": [{"start": "14:00", "end": "18:00"}, {"start": "08:00", "end": "15:00"}],
        },
        pytest.raises(ValidationError, match="overlap"),
    ),
    (
        WorkCalendar,
        {"timezone": "UTC", "working_periods": [{"start": "12:00", "end": "08:00"}]},
        pytest.raises(ValidationError, match="after start"),
    ),
    (
        WorkCalendar,
        {"timezone": "UTC", "holidays": ["2025-05-01"], "extra_working_days": ["2025-05-01"]},
        pytest.raises(ValidationError, match="both"),
    ),
    (TimeLimitTable, {"limits": {"0102": {"unit": "working_hours", "amount": 4}}}, does_not_raise()),
    (
        TimeLimitTable,
        {"limits": {"102": {"unit": "working_hours", "amount": 4}}},
        pytest.raises(ValidationError),
    ),
]


@pytest.mark.parametrize(("model", "data", "expectation"), CONFIG_ROWS)
def test_config_validation(model: type, data: dict[str, Any], expectation: Any) -> None:
    with expectation:
        model.model_validate(data)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        CAL.timezone = "UTC"  # type: ignore[misc]


def test_limit_table_lookup() -> None:
    table = TimeLimitTable.model_validate(
        {
            "limits": {"0102": {"unit": "working_hours", "amount": 4}},
            "default": {"unit": "working_days", "amount": 1},
        }
    )
    assert table.limit_for("0102") == limit("working_hours", 4)
    assert table.limit_for("0505") == limit("working_days", 1)
    with pytest.raises(KeyError, match="0505"):
        TimeLimitTable().limit_for("0505")
