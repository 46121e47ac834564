"""The figures cities report about their cases, and the precision of the AI, from SQL aggregates.

A period picks a cohort: the cases the cameras reported (``created_at``) in ``[since, until)``. Every
figure describes that cohort as it stands now, so a month's filing rate still improves as its last
cases are verified. Definitions (GB/T 30428 reports, DOMAIN.md section 2):

* verified = confirmed + rejected; confirmed = filed (``filed_at`` set), rejected = void;
* filing rate = confirmed / verified, which is also the AI's precision (valid-report rate);
* on-time closure rate = closed no later than the deadline / closed;
* rework rate = cases returned at least once / cases ever dispatched;
* overdue open = not closed or void, and past the deadline now.

Three grouped queries do the work, whatever the number of cases: one by (rule, camera) with
conditional counts, one by UTC hour for the daily series (folded into the city's local days here, so
both backends agree without time-zone support in SQLite), and one over the audit log's reject entries.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from curbwatch.server.cases.queries import overdue_condition
from curbwatch.server.cases.workflow import TERMINAL_STATES, Action, CaseStatus, Outcome
from curbwatch.server.tables import AuditLog, Case

MAX_PERIOD = timedelta(days=1000)
_S = CaseStatus
# A closed case went through dispatch; so did one suspended from, or returned to filed out of, dispatch.
DISPATCHED_STATES = [s.value for s in (_S.DISPATCHED, _S.IN_PROGRESS, _S.HANDLED, _S.CHECKING, _S.CLOSED)]


class KpiPeriodInvalid(ValueError):
    """The period is empty, reversed or too long."""


@dataclass(frozen=True)
class Precision:
    """Verification results of one rule or one camera."""

    key: str
    reported: int
    confirmed: int
    rejected: int
    precision: float | None
    reject_reasons: dict[str, int]


@dataclass(frozen=True)
class DailyPoint:
    """New cases of one local day, and how many of them were confirmed and rejected so far."""

    day: date
    new_cases: int
    confirmed: int
    rejected: int
    precision: float | None


@dataclass(frozen=True)
class Kpis:
    """The report of one period (see the module docstring for each definition)."""

    since: datetime
    until: datetime
    timezone: str
    reported: int
    verified: int
    confirmed: int
    rejected: int
    filing_rate: float | None
    dispatched: int
    reworked: int
    rework_rate: float | None
    closed: int
    closed_on_time: int
    on_time_closure_rate: float | None
    overdue_open: int
    outcomes: dict[str, int]
    reject_reasons: dict[str, int]
    by_rule: list[Precision]
    by_camera: list[Precision]
    daily: list[DailyPoint]


def ratio(part: int, whole: int) -> float | None:
    """``part / whole``, or None when there is nothing to divide."""
    return part / whole if whole else None


def _count(condition: ColumnElement[bool]) -> Any:
    return func.count().filter(condition)


_COUNTS = {
    "reported": func.count(),
    "confirmed": _count(Case.filed_at.is_not(None)),
    "rejected": _count(Case.status == _S.VOID.value),
    "closed": _count(Case.status == _S.CLOSED.value),
    "closed_on_time": _count(
        and_(Case.status == _S.CLOSED.value, or_(Case.deadline.is_(None), Case.closed_at <= Case.deadline))
    ),
    "dispatched": _count(
        or_(
            Case.status.in_(DISPATCHED_STATES),
            and_(Case.status == _S.SUSPENDED.value, Case.suspended_from.in_(DISPATCHED_STATES)),
            Case.rework_count > 0,
        )
    ),
    "reworked": _count(Case.rework_count > 0),
    **{
        f"outcome_{outcome.value}": _count(
            and_(Case.status == _S.CLOSED.value, Case.outcome == outcome.value)
        )
        for outcome in Outcome
    },
}


def _in_period(since: datetime, until: datetime) -> ColumnElement[bool]:
    return and_(Case.created_at >= since, Case.created_at < until)


def _hour_bucket(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("hour", func.timezone("UTC", Case.created_at))  # naive UTC hours
    # SQLite stores UTC text, "YYYY-MM-DD HH:MM:SS.ffffff": its first 13 characters are the hour,
    # and cutting them is several times faster than strftime over 100,000 rows.
    return func.substr(Case.created_at, 1, 13)


def _by_place(session: Session, since: datetime, until: datetime, now: datetime) -> list[dict[str, Any]]:
    still_open = Case.status.not_in([s.value for s in TERMINAL_STATES])
    overdue = _count(and_(still_open, overdue_condition(now))).label("overdue_open")
    query = (
        select(Case.rule, Case.camera_id, *(value.label(name) for name, value in _COUNTS.items()), overdue)
        .where(_in_period(since, until))
        .group_by(Case.rule, Case.camera_id)
    )
    return [dict(row._mapping) for row in session.execute(query)]


def _reject_reasons(session: Session, since: datetime, until: datetime) -> list[tuple[str, str, str, int]]:
    query = (
        select(Case.rule, Case.camera_id, AuditLog.reason, func.count())
        .join(AuditLog, AuditLog.case_id == Case.id)
        # Only void cases were rejected: the status index narrows the scan to them.
        .where(Case.status == _S.VOID.value, AuditLog.action == Action.REJECT.value, _in_period(since, until))
        .group_by(Case.rule, Case.camera_id, AuditLog.reason)
    )
    return [(rule, camera, reason or "unknown", n) for rule, camera, reason, n in session.execute(query)]


def _daily(session: Session, since: datetime, until: datetime, zone: ZoneInfo) -> list[DailyPoint]:
    bucket = _hour_bucket(session).label("hour")
    query = (
        select(bucket, func.count(), _COUNTS["confirmed"], _COUNTS["rejected"])
        .where(_in_period(since, until))
        .group_by(bucket)
    )
    # day -> [new, confirmed, rejected]
    totals: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
    for hour, *counts in session.execute(query):
        start = hour if isinstance(hour, datetime) else datetime.fromisoformat(f"{hour}:00")
        day = start.replace(tzinfo=UTC).astimezone(zone).date()
        totals[day] = [total + n for total, n in zip(totals[day], counts, strict=True)]
    first, last = since.astimezone(zone).date(), (until - timedelta(microseconds=1)).astimezone(zone).date()
    points = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        new, confirmed, rejected = totals[day]
        points.append(DailyPoint(day, new, confirmed, rejected, ratio(confirmed, confirmed + rejected)))
    return points


def _precision(
    rows: list[dict[str, Any]], reasons: list[tuple[str, str, str, int]], key: str
) -> list[Precision]:
    sums: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        sums[row[key]].update(reported=row["reported"], confirmed=row["confirmed"], rejected=row["rejected"])
    why: dict[str, Counter[str]] = defaultdict(Counter)
    for rule, camera, reason, n in reasons:
        why[rule if key == "rule" else camera][reason] += n
    return [
        Precision(
            name,
            counts["reported"],
            counts["confirmed"],
            counts["rejected"],
            ratio(counts["confirmed"], counts["confirmed"] + counts["rejected"]),
            dict(sorted(why[name].items())),
        )
        for name, counts in sorted(sums.items())
    ]


def compute_kpis(session: Session, *, since: datetime, until: datetime, now: datetime, timezone: str) -> Kpis:
    """The report of the cases created in ``[since, until)``.

    Args:
        session: Read only.
        since: Start of the period, inclusive; timezone-aware.
        until: End of the period, exclusive; timezone-aware.
        now: For the overdue count.
        timezone: IANA zone whose local days the daily series uses.

    Raises:
        KpiPeriodInvalid: Naive times, ``until`` not after ``since``, or longer than :data:`MAX_PERIOD`.
    """
    if since.tzinfo is None or until.tzinfo is None:
        raise KpiPeriodInvalid("since and until need a time zone")
    # SQLite keeps times as UTC text without offset: compare in UTC only.
    since, until, now = since.astimezone(UTC), until.astimezone(UTC), now.astimezone(UTC)
    if until <= since:
        raise KpiPeriodInvalid("until must be after since")
    if until - since > MAX_PERIOD:
        raise KpiPeriodInvalid(f"the period may be at most {MAX_PERIOD.days} days")
    rows = _by_place(session, since, until, now)
    reasons = _reject_reasons(session, since, until)
    total: Counter[str] = Counter()
    for row in rows:
        total.update({name: value for name, value in row.items() if isinstance(value, int)})
    all_reasons: Counter[str] = Counter()
    for *_, reason, n in reasons:
        all_reasons[reason] += n
    verified = total["confirmed"] + total["rejected"]
    return Kpis(
        since=since,
        until=until,
        timezone=timezone,
        reported=total["reported"],
        verified=verified,
        confirmed=total["confirmed"],
        rejected=total["rejected"],
        filing_rate=ratio(total["confirmed"], verified),
        dispatched=total["dispatched"],
        reworked=total["reworked"],
        rework_rate=ratio(total["reworked"], total["dispatched"]),
        closed=total["closed"],
        closed_on_time=total["closed_on_time"],
        on_time_closure_rate=ratio(total["closed_on_time"], total["closed"]),
        overdue_open=total["overdue_open"],
        outcomes={outcome.value: total[f"outcome_{outcome.value}"] for outcome in Outcome},
        reject_reasons=dict(sorted(all_reasons.items())),
        by_rule=_precision(rows, reasons, "rule"),
        by_camera=_precision(rows, reasons, "camera_id"),
        daily=_daily(session, since, until, ZoneInfo(timezone)),
    )
