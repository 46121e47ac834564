"""Folding events into cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1
from curbwatch.server.audit import verify_chain
from curbwatch.server.cases.folding import FoldingConfig, FoldingError, fold_event, fold_events, place_of
from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig, GridConfig
from curbwatch.server.tables import AuditLog, Case, CaseEvent
from tests.server.factories import event_document

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
CASE_CONFIG = CaseServerConfig()
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
CONFIG = FoldingConfig(attach_within_s=600)


def _iso(at: datetime) -> str:
    return at.isoformat()


def episode(
    camera_id: str,
    *,
    start: datetime = T0,
    zone: str = "kerb",
    types: tuple[str, ...] = ("start", "update", "end"),
    step_s: float = 60,
    device_id: str = "edge-fold",
    **overrides: Any,
) -> list[EventV1]:
    """Events of one episode: the first at ``start``, one every ``step_s`` seconds."""
    episode_id = uuid.uuid4().hex
    events = []
    for n, kind in enumerate(types):
        ts = start + timedelta(seconds=step_s * n)
        document = event_document(
            device_id,
            episode_id=episode_id,
            type=kind,
            camera_id=camera_id,
            zone=zone,
            episode_start=_iso(start),
            ts=_iso(ts),
            dwell_s=(ts - start).total_seconds(),
            **overrides,
        )
        events.append(EventV1.model_validate(document))
    return events


def fold_all(
    factory: sessionmaker[Session], events: list[EventV1], grid: GridConfig | None = None
) -> list[str]:
    """Fold each event in its own transaction; the case ids they landed on."""
    ids = []
    for event in events:
        with factory() as session, session.begin():
            ids.append(fold_event(session, event, config=CONFIG, at=NOW, grid=grid).id)
    return ids


def camera() -> str:
    return f"cam-{uuid.uuid4().hex[:12]}"


def links(factory: sessionmaker[Session], case_id: str) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(CaseEvent.event_id).where(CaseEvent.case_id == case_id)))


def audit_count(factory: sessionmaker[Session], case_id: str) -> int:
    with factory() as session:
        return session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.case_id == case_id))


def test_an_episode_folds_into_one_new_case(session_factory: sessionmaker[Session]) -> None:
    cam = camera()
    events = episode(cam, location=(31.2, 121.5))
    ids = fold_all(session_factory, events)
    assert len(set(ids)) == 1
    assert sorted(links(session_factory, ids[0])) == sorted(e.event_id for e in events)
    with session_factory() as session:
        case = session.get(Case, ids[0])
        assert case is not None
        assert case.status == "awaiting_verification"
        assert (case.camera_id, case.zone, case.violation, case.event_code) == (
            cam,
            "kerb",
            "illegal_parking",
            "0505",
        )
        assert (case.location_lat, case.location_lon) == (31.2, 121.5)
        assert case.episode_ids == [events[0].episode_id] and case.first_episode_id == events[0].episode_id
        assert case.opened_at.replace(tzinfo=UTC) == T0
        assert case.last_event_at.replace(tzinfo=UTC) == T0 + timedelta(seconds=120)
        opens = session.scalars(select(AuditLog).where(AuditLog.case_id == case.id)).all()
        assert [(a.action, a.actor, a.role, a.from_state, a.to_state) for a in opens] == [
            ("open_case", "edge:edge-fold", "system", None, "awaiting_verification")
        ]
        assert verify_chain(session) == []


@pytest.mark.parametrize(
    ("gap_s", "same_case"),
    [(0, True), (599, True), (600, True), (601, False), (3600, False)],
)
def test_a_new_episode_at_the_same_place_attaches_within_the_window(
    session_factory: sessionmaker[Session], gap_s: int, same_case: bool
) -> None:
    cam = camera()
    first = episode(cam)
    ended = T0 + timedelta(seconds=120)
    second = episode(cam, start=ended + timedelta(seconds=gap_s))
    first_ids, second_ids = fold_all(session_factory, first), fold_all(session_factory, second)
    assert (first_ids[0] == second_ids[0]) is same_case
    assert len(set(second_ids)) == 1
    if same_case:
        assert len(links(session_factory, first_ids[0])) == 6
        with session_factory() as session:
            case = session.get(Case, first_ids[0])
            assert case is not None
            assert case.episode_ids == [first[0].episode_id, second[0].episode_id]
            assert case.last_event_at.replace(tzinfo=UTC) == second[-1].ts
        assert audit_count(session_factory, first_ids[0]) == 1


@pytest.mark.parametrize(
    "change",
    [{"zone": "corner"}, {"violation": "unlicensed_vending", "rule": "unlicensed_vending"}],
    ids=["other zone", "other violation"],
)
def test_another_zone_or_violation_opens_another_case(
    session_factory: sessionmaker[Session], change: dict[str, str]
) -> None:
    cam = camera()
    first = fold_all(session_factory, episode(cam))
    second = fold_all(session_factory, episode(cam, start=T0 + timedelta(seconds=130), **change))
    assert first[0] != second[0]


def test_the_same_camera_name_on_another_device_is_another_place(
    session_factory: sessionmaker[Session],
) -> None:
    cam = camera()
    first = fold_all(session_factory, episode(cam))
    second = fold_all(
        session_factory, episode(cam, start=T0 + timedelta(seconds=130), device_id="edge-other")
    )
    assert first[0] != second[0]
    assert place_of(episode(cam, device_id="edge-other")[0]) == ("edge-other", cam, "kerb")


GRID = GridConfig(origin_lat=31.2, origin_lon=121.4, cell_m=100)


@pytest.mark.parametrize(
    ("grid", "location", "has_cell"),
    [(GRID, (31.2, 121.5), True), (GRID, None, False), (None, (31.2, 121.5), False)],
    ids=["located", "no location", "no grid"],
)
def test_a_new_case_gets_the_grid_cell_of_its_location(
    session_factory: sessionmaker[Session],
    grid: GridConfig | None,
    location: tuple[float, float] | None,
    has_cell: bool,
) -> None:
    case_id = fold_all(session_factory, episode(camera(), location=location), grid=grid)[0]
    with session_factory() as session:
        case = session.get(Case, case_id)
        assert case is not None
        assert case.grid_cell == (GRID.cell_of(31.2, 121.5) if has_cell else None)


def test_a_batch_folds_as_one_event_after_the_other(session_factory: sessionmaker[Session]) -> None:
    here, there = camera(), camera()
    first, other = episode(here), episode(there)
    rejoin = episode(here, start=T0 + timedelta(seconds=150))  # the same violation seen again, same batch
    batch = [first[0], other[0], first[1], rejoin[0], other[1], first[0], rejoin[1]]
    with session_factory() as session, session.begin():
        cases = fold_events(session, [(event, NOW) for event in batch], config=CONFIG)
        ids = [case.id for case in cases]
    assert ids[0] == ids[2] == ids[3] == ids[5] == ids[6] != ids[1] == ids[4]
    assert sorted(links(session_factory, ids[0])) == sorted(e.event_id for e in (*first[:2], *rejoin[:2]))
    assert audit_count(session_factory, ids[0]) == audit_count(session_factory, ids[1]) == 1
    with session_factory() as session:
        case = session.get(Case, ids[0])
        assert case is not None and case.episode_ids == [first[0].episode_id, rejoin[0].episode_id]
        # A later batch with the rest of the episodes finds the cases the first one opened.
        later = fold_events(session, [(first[2], NOW), (other[2], NOW)], config=CONFIG)
        assert [c.id for c in later] == [ids[0], ids[1]]


@pytest.mark.parametrize("final", ["close", "reject"])
def test_a_closed_or_void_case_is_not_reopened(session_factory: sessionmaker[Session], final: str) -> None:
    cam = camera()
    first = episode(cam)
    case_id = fold_all(session_factory, first)[0]
    steps: list[dict[str, Any]] = (
        [{"action": "reject", "role": "operator", "reason": "false_detection"}]
        if final == "reject"
        else [
            {"action": "confirm", "role": "operator"},
            {"action": "dispatch", "role": "dispatcher", "department": "traffic"},
            {"action": "start", "role": "dispatcher"},
            {"action": "report_handled", "role": "dispatcher"},
            {"action": "request_check", "role": "operator"},
            {"action": "close", "role": "supervisor", "outcome": "enforcement", "closure_type": "normal"},
        ]
    )
    for step in steps:
        with session_factory() as session, session.begin():
            transition_case(session, config=CASE_CONFIG, case_id=case_id, actor="u-1", at=NOW, **step)
    # A late update of the closed case's own episode still belongs to it.
    late = EventV1.model_validate(
        {**first[1].model_dump(mode="json", by_alias=True), "event_id": uuid.uuid4().hex}
    )
    assert fold_all(session_factory, [late]) == [case_id]
    again = fold_all(session_factory, episode(cam, start=T0 + timedelta(seconds=150)))
    assert again[0] != case_id


def test_folding_an_event_twice_changes_nothing(session_factory: sessionmaker[Session]) -> None:
    events = episode(camera())
    case_id = fold_all(session_factory, events)[0]

    def snapshot() -> tuple[Any, ...]:
        with session_factory() as session:
            case = session.get(Case, case_id)
            assert case is not None
            return (case.episode_ids, case.last_event_at, case.updated_at, case.status)

    before = snapshot()
    later = NOW + timedelta(hours=1)
    for event in events:
        with session_factory() as session, session.begin():
            assert fold_event(session, event, config=CONFIG, at=later).id == case_id
    assert snapshot() == before
    assert len(links(session_factory, case_id)) == 3
    assert audit_count(session_factory, case_id) == 1


def test_a_naive_fold_time_is_refused(session_factory: sessionmaker[Session]) -> None:
    event = episode(camera(), types=("start",))[0]
    with session_factory() as session, pytest.raises(FoldingError):
        fold_event(session, event, config=CONFIG, at=datetime(2026, 11, 27, 2, 0))
