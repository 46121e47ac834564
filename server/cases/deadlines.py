"""Handling time limits (处置时限) and when a case falls due.

Cities set limits per event code in one of four units:

* ``continuous_hours`` (紧急工作时): elapsed real time, nights and holidays included.
* ``working_hours`` (工作时): only time inside the calendar's working periods on working days counts.
* ``working_days``: N days' worth of working time, i.e. N x the daily working hours; a case that
  arrives on Friday at 16:00 with one working day is due on Monday at 16:00.
* ``natural_days``: the same wall-clock time N calendar days later in the calendar's time zone.

All arithmetic on elapsed time is done in UTC so a DST change neither adds nor removes working time;
working periods are wall-clock times in the calendar's zone.

Example:
    >>> from datetime import datetime
    >>> cal = WorkCalendar(timezone="Asia/Shanghai")
    >>> start = datetime(2025, 5, 9, 17, 0, tzinfo=cal.zone)  # a Friday
    >>> deadline(start, TimeLimit(unit="working_hours", amount=4), cal).isoformat()
    '2025-05-12T11:00:00+08:00'
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from typing import Self
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curbwatch.schema.zones import check_timezone

# A calendar must offer working time within this many days, or it is treated as broken.
MAX_SCAN_DAYS = 3660


class LimitUnit(enum.StrEnum):
    """Unit of a handling time limit."""

    CONTINUOUS_HOURS = "continuous_hours"
    WORKING_HOURS = "working_hours"
    WORKING_DAYS = "working_days"
    NATURAL_DAYS = "natural_days"


class DeadlineError(ValueError):
    """A deadline cannot be computed (naive start, or a calendar with no working time)."""


class TimeLimit(BaseModel):
    """One handling time limit, e.g. exposed rubbish: 4 working hours."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: LimitUnit = Field(title="Unit", description="How the amount is counted.")
    amount: float = Field(
        gt=0,
        le=24 * 366,
        title="Amount",
        description="How many units; day units must be whole numbers, hour units may be fractional (0.5 h).",
    )

    @model_validator(mode="after")
    def verify_whole_days(self) -> Self:
        """Day units count whole days: a fraction of a working day has no agreed meaning."""
        if self.unit in (LimitUnit.WORKING_DAYS, LimitUnit.NATURAL_DAYS) and not self.amount.is_integer():
            raise ValueError(f"{self.unit} needs a whole number of days, got {self.amount}")
        return self


class WorkPeriod(BaseModel):
    """One working period of the day in local wall-clock time, e.g. 08:00-12:00."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(title="Start", description="Local time the period begins.")
    end: time = Field(title="End", description="Local time the period ends; after start, same day.")

    @model_validator(mode="after")
    def verify_order(self) -> Self:
        """A period runs forward within one day."""
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("period times are local wall-clock times; give no offset")
        if self.end <= self.start:
            raise ValueError(f"period end {self.end} must be after start {self.start}")
        return self

    @property
    def hours(self) -> float:
        """Nominal length in hours (wall clock)."""
        start_s = self.start.hour * 3600 + self.start.minute * 60 + self.start.second
        end_s = self.end.hour * 3600 + self.end.minute * 60 + self.end.second
        return (end_s - start_s) / 3600


def _default_periods() -> tuple[WorkPeriod, ...]:
    return (WorkPeriod(start=time(8), end=time(12)), WorkPeriod(start=time(14), end=time(18)))


class WorkCalendar(BaseModel):
    """A city's working calendar: which days and hours count as working time.

    Extra working days (调休, a Saturday worked to make up for a bridged holiday) override both the
    weekday set and the holiday list.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = Field(title="Time zone", description="IANA zone the periods are read in.")
    working_weekdays: frozenset[int] = Field(
        default=frozenset({1, 2, 3, 4, 5}),
        min_length=1,
        title="Working weekdays",
        description="ISO weekdays that are working days (1 = Monday ... 7 = Sunday).",
    )
    working_periods: tuple[WorkPeriod, ...] = Field(
        default_factory=_default_periods,
        min_length=1,
        title="Working periods",
        description="Working periods of each working day, in order, not overlapping.",
    )
    holidays: frozenset[date] = Field(
        default=frozenset(), title="Holidays", description="Dates that are not working days."
    )
    extra_working_days: frozenset[date] = Field(
        default=frozenset(),
        title="Extra working days",
        description="Dates worked although their weekday is not (swapped weekends).",
    )

    @field_validator("timezone")
    @classmethod
    def verify_timezone(cls, value: str) -> str:
        """The zone must exist in the tz database."""
        return check_timezone(value)

    @field_validator("working_weekdays")
    @classmethod
    def verify_weekdays(cls, value: frozenset[int]) -> frozenset[int]:
        """ISO weekday numbers only."""
        bad = sorted(day for day in value if not 1 <= day <= 7)
        if bad:
            raise ValueError(f"weekdays are ISO numbers 1..7, got {bad}")
        return value

    @model_validator(mode="after")
    def verify_calendar(self) -> Self:
        """Periods ordered and disjoint; no date both holiday and extra working day."""
        for before, after in zip(self.working_periods, self.working_periods[1:], strict=False):
            if after.start < before.end:
                raise ValueError(f"working periods overlap or are out of order: {before} then {after}")
        both = sorted(self.holidays & self.extra_working_days)
        if both:
            raise ValueError(f"dates both holiday and extra working day: {[d.isoformat() for d in both]}")
        return self

    @cached_property
    def zone(self) -> ZoneInfo:
        """The calendar's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def daily_hours(self) -> float:
        """Working hours in one working day."""
        return sum(period.hours for period in self.working_periods)

    def is_working_day(self, day: date) -> bool:
        """Whether ``day`` (a local date) has working periods."""
        if day in self.extra_working_days:
            return True
        if day in self.holidays:
            return False
        return day.isoweekday() in self.working_weekdays


class TimeLimitTable(BaseModel):
    """Handling time limits per event code (the code table is per city)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: dict[str, TimeLimit] = Field(
        default_factory=dict,
        title="Limits by event code",
        description="Four-digit event code (major + minor class, e.g. 0505) to its handling limit.",
    )
    default: TimeLimit | None = Field(
        default=None, title="Default limit", description="Limit for codes not listed; none means refuse."
    )

    @field_validator("limits")
    @classmethod
    def verify_codes(cls, value: dict[str, TimeLimit]) -> dict[str, TimeLimit]:
        """Event codes are four digits."""
        bad = sorted(code for code in value if not (len(code) == 4 and code.isdigit()))
        if bad:
            raise ValueError(f"event codes are four digits, got {bad}")
        return value

    def limit_for(self, event_code: str) -> TimeLimit:
        """The limit for ``event_code``.

        Raises:
            KeyError: The code is not listed and there is no default.
        """
        limit = self.limits.get(event_code, self.default)
        if limit is None:
            raise KeyError(f"no handling time limit for event code {event_code!r} and no default")
        return limit


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise DeadlineError(f"{name} must be timezone-aware, got {moment!r}")


def _local_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    # Round-trip through UTC so a wall time inside a spring-forward gap resolves to a real instant.
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def _add_working_time(start_utc: datetime, duration: timedelta, calendar: WorkCalendar) -> datetime:
    remaining = duration
    day = start_utc.astimezone(calendar.zone).date()
    for _ in range(MAX_SCAN_DAYS):
        if calendar.is_working_day(day):
            for period in calendar.working_periods:
                period_end = _local_instant(day, period.end, calendar.zone)
                segment_start = max(_local_instant(day, period.start, calendar.zone), start_utc)
                if segment_start >= period_end:
                    continue
                available = period_end - segment_start
                if remaining <= available:
                    return segment_start + remaining
                remaining -= available
        day += timedelta(days=1)
    raise DeadlineError(f"calendar {calendar.timezone} has no working time within {MAX_SCAN_DAYS} days")


def deadline(start: datetime, limit: TimeLimit, calendar: WorkCalendar) -> datetime:
    """When a case started at ``start`` falls due under ``limit``.

    Args:
        start: When the clock starts (e.g. dispatch time); timezone-aware.
        limit: The handling time limit.
        calendar: Working days, hours and time zone.

    Returns:
        The due instant, expressed in the calendar's time zone. Exactly at it the case is still on time.

    Raises:
        DeadlineError: ``start`` is naive, or the calendar has no working time to count.
    """
    _require_aware(start, "start")
    start_utc = start.astimezone(UTC)
    if limit.unit is LimitUnit.CONTINUOUS_HOURS:
        due = start_utc + timedelta(hours=limit.amount)
    elif limit.unit is LimitUnit.WORKING_HOURS:
        due = _add_working_time(start_utc, timedelta(hours=limit.amount), calendar)
    elif limit.unit is LimitUnit.WORKING_DAYS:
        due = _add_working_time(start_utc, timedelta(hours=limit.amount * calendar.daily_hours), calendar)
    else:
        # Natural days keep the wall-clock time, so across DST they are 23 or 25 hours long.
        local = start.astimezone(calendar.zone).replace(tzinfo=None)
        target = local + timedelta(days=int(limit.amount))
        due = target.replace(tzinfo=calendar.zone).astimezone(UTC)
    return due.astimezone(calendar.zone)


def is_overdue(start: datetime, limit: TimeLimit, calendar: WorkCalendar, *, at: datetime) -> bool:
    """Whether a case started at ``start`` is past its deadline at ``at`` (timezone-aware)."""
    _require_aware(at, "at")
    return at > deadline(start, limit, calendar)
