"""KPIs over hand-built cases with known outcomes, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.kpis import KpiPeriodInvalid, Kpis, compute_kpis
from tests.server.factories import event_document

CONFIG = CaseServerConfig()
PARKING = {"rule": "illegal_parking", "violation": "illegal_parking", "event_code": "0505"}
VENDING = {"rule": "unlicensed_vending", "violation": "unlicensed_vending", "event_code": "0501"}
CONFIRM = {"action": "confirm", "role": "operator"}
DISPATCH = {"action": "dispatch", "role": "dispatcher", "department": "traffic police"}
START = {"action": "start", "role": "dispatcher"}
HANDLED = {"action": "report_handled", "role": "dispatcher"}
CHECK = {"action": "request_check", "role": "operator"}
REWORK = {"action": "return_for_rework", "role": "dispatcher", "reason": "still there"}
TO_HANDLING = [CONFIRM, DISPATCH, START, HANDLED, CHECK]


def close(outcome: str) -> dict[str, Any]:
    return {"action": "close", "role": "supervisor", "outcome": outcome, "closure_type": "normal"}


def reject(reason: str) -> dict[str, Any]:
    return {"action": "reject", "role": "operator", "reason": reason}


def unique_day() -> datetime:
    """Midnight UTC of a day no other test uses, so the period holds only this test's cases."""
    return datetime(2040, 1, 1, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 20_000)


def make_case(
    factory: sessionmaker[Session],
    *,
    camera: str,
    kind: dict[str, str],
    created_at: datetime,
    steps: list[dict[str, Any]],
    step_gap: timedelta = timedelta(minutes=10),
) -> str:
    """A case alone at its zone, opened at ``created_at``, taken through ``steps`` one per ``step_gap``."""
    zone = f"zone-{uuid.uuid4().hex[:8]}"
    event = EventV1.model_validate(event_document("edge-kpi", camera_id=camera, zone=zone, **kind))
    with factory() as session, session.begin():
        case_id = fold_event(session, event, config=FoldingConfig(), at=created_at).id
    for n, step in enumerate(steps, start=1):
        with factory() as session, session.begin():
            transition_case(
                session, config=CONFIG, case_id=case_id, actor="u", at=created_at + n * step_gap, **step
            )
    return case_id


@pytest.fixture
def report(session_factory: sessionmaker[Session]) -> tuple[Kpis, str, str, datetime]:
    """Seven cases in a three-day period (and one just before it) with known outcomes."""
    day = unique_day()
    cam_a, cam_b = f"cam-a-{uuid.uuid4().hex[:8]}", f"cam-b-{uuid.uuid4().hex[:8]}"
    morning = day + timedelta(hours=2)  # 10:00 in Shanghai
    plans: list[tuple[str, dict[str, str], datetime, list[dict[str, Any]], timedelta]] = [
        # closed within its 2 continuous hours
        (cam_a, PARKING, morning, [*TO_HANDLING, close("service")], timedelta(minutes=10)),
        # returned once from checking, closed after its deadline
        (
            cam_a,
            PARKING,
            morning,
            [*TO_HANDLING, REWORK, HANDLED, CHECK, close("enforcement")],
            timedelta(hours=1),
        ),
        (cam_a, PARKING, morning, [reject("false_detection")], timedelta(minutes=1)),
        (cam_b, VENDING, morning, [reject("duplicate")], timedelta(minutes=1)),
        # 17:30 UTC is 01:30 the next day in Shanghai: the daily series counts it there
        (cam_b, VENDING, day + timedelta(hours=17, minutes=30), [CONFIRM], timedelta(minutes=1)),
        (cam_b, VENDING, day + timedelta(days=1, hours=3), [], timedelta(minutes=1)),
        # dispatched to the wrong department and sent back: filed again, reworked
        (cam_a, PARKING, day + timedelta(days=1, hours=4), [CONFIRM, DISPATCH, REWORK], timedelta(minutes=5)),
        # before the period
        (cam_a, PARKING, day - timedelta(seconds=1), [reject("permitted")], timedelta(minutes=1)),
    ]
    for camera, kind, created_at, steps, gap in plans:
        make_case(session_factory, camera=camera, kind=kind, created_at=created_at, steps=steps, step_gap=gap)
    with session_factory() as session:
        kpis = compute_kpis(
            session,
            since=day,
            until=day + timedelta(days=3),
            now=day + timedelta(days=10),
            timezone="Asia/Shanghai",
        )
    return kpis, cam_a, cam_b, day


def test_city_kpis_of_the_period(report: tuple[Kpis, str, str, datetime]) -> None:
    kpis, *_ = report
    assert (kpis.reported, kpis.verified, kpis.confirmed, kpis.rejected) == (7, 6, 4, 2)
    assert kpis.filing_rate == pytest.approx(4 / 6)
    assert (kpis.dispatched, kpis.reworked, kpis.rework_rate) == (3, 2, pytest.approx(2 / 3))
    assert (kpis.closed, kpis.closed_on_time, kpis.on_time_closure_rate) == (2, 1, 0.5)
    # the filed vending case and the case sent back to filed are past their deadlines
    assert kpis.overdue_open == 2
    assert kpis.outcomes == {"service": 1, "management": 0, "enforcement": 1}
    assert kpis.reject_reasons == {"duplicate": 1, "false_detection": 1}


def test_precision_per_rule_and_camera(report: tuple[Kpis, str, str, datetime]) -> None:
    kpis, cam_a, cam_b, _ = report
    rules = {
        p.key: (p.reported, p.confirmed, p.rejected, p.precision, p.reject_reasons) for p in kpis.by_rule
    }
    assert rules == {
        "illegal_parking": (4, 3, 1, 0.75, {"false_detection": 1}),
        "unlicensed_vending": (3, 1, 1, 0.5, {"duplicate": 1}),
    }
    cameras = {p.key: (p.reported, p.confirmed, p.rejected, p.precision) for p in kpis.by_camera}
    assert cameras == {cam_a: (4, 3, 1, 0.75), cam_b: (3, 1, 1, 0.5)}


def test_daily_series_uses_the_city_days(report: tuple[Kpis, str, str, datetime]) -> None:
    kpis, *_, day = report
    first = day.date()
    # The period starts at 08:00 Shanghai time on the first day and ends at 08:00 on the fourth.
    assert [(p.day, p.new_cases, p.confirmed, p.rejected) for p in kpis.daily] == [
        (first, 4, 2, 2),
        (first + timedelta(days=1), 3, 2, 0),
        (first + timedelta(days=2), 0, 0, 0),
        (first + timedelta(days=3), 0, 0, 0),
    ]
    assert kpis.daily[0].precision == 0.5 and kpis.daily[2].precision is None
    assert all(isinstance(p.day, date) for p in kpis.daily)


def test_empty_period_gives_zeros_and_no_rates(session_factory: sessionmaker[Session]) -> None:
    day = unique_day()
    with session_factory() as session:
        kpis = compute_kpis(session, since=day, until=day + timedelta(hours=1), now=day, timezone="UTC")
    assert (kpis.reported, kpis.filing_rate, kpis.rework_rate, kpis.on_time_closure_rate) == (
        0,
        None,
        None,
        None,
    )
    assert kpis.by_rule == [] and [p.new_cases for p in kpis.daily] == [0]


@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        (datetime(2030, 1, 2, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), "after since"),
        (datetime(2030, 1, 1), datetime(2030, 1, 2, tzinfo=UTC), "time zone"),
        (datetime(2020, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), "at most"),
    ],
)
def test_bad_periods_are_refused(
    session_factory: sessionmaker[Session], since: datetime, until: datetime, message: str
) -> None:
    with session_factory() as session, pytest.raises(KpiPeriodInvalid, match=message):
        compute_kpis(session, since=since, until=until, now=until, timezone="UTC")
