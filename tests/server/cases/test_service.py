"""Case transitions stored with their audit entries, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.schema.events import EventV1
from curbwatch.server.audit import verify_chain
from curbwatch.server.cases import workflow
from curbwatch.server.cases.deadlines import deadline
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.service import CaseNotFound, case_state, is_overdue, transition_case
from curbwatch.server.cases.workflow import Action, CaseState, Role
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.tables import AuditLog, Case
from tests.server.factories import event_document

CONFIG = CaseServerConfig()
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def new_case(factory: sessionmaker[Session]) -> str:
    """A freshly folded case, alone at its own camera."""
    event = EventV1.model_validate(event_document("edge-svc", camera_id=f"cam-{uuid.uuid4().hex[:12]}"))
    with factory() as session, session.begin():
        return fold_event(session, event, config=FoldingConfig(), at=NOW).id


def audit_rows(factory: sessionmaker[Session], case_id: str) -> list[AuditLog]:
    with factory() as session:
        return list(
            session.scalars(select(AuditLog).where(AuditLog.case_id == case_id).order_by(AuditLog.id))
        )


def stored(factory: sessionmaker[Session], case_id: str) -> Case:
    with factory() as session:
        case = session.get(Case, case_id)
        assert case is not None
        return case


HAPPY_PATH: list[tuple[dict[str, Any], str]] = [
    ({"action": "confirm", "role": "operator"}, "filed"),
    ({"action": "dispatch", "role": "dispatcher", "department": "traffic police"}, "dispatched"),
    ({"action": "start", "role": "dispatcher"}, "in_progress"),
    ({"action": "report_handled", "role": "dispatcher"}, "handled"),
    ({"action": "request_check", "role": "operator"}, "checking"),
    ({"action": "close", "role": "supervisor", "outcome": "enforcement", "closure_type": "normal"}, "closed"),
]


def test_each_step_of_the_happy_path_stores_its_state_and_one_audit_entry(
    session_factory: sessionmaker[Session],
) -> None:
    case_id = new_case(session_factory)
    for n, (step, expected) in enumerate(HAPPY_PATH, start=1):
        at = NOW + timedelta(minutes=n)
        with session_factory() as session, session.begin():
            transition_case(session, config=CONFIG, case_id=case_id, actor=f"u-{n}", at=at, **step)
        case = stored(session_factory, case_id)
        assert case.status == expected
        assert case.updated_at.replace(tzinfo=UTC) == at
        rows = audit_rows(session_factory, case_id)
        assert len(rows) == n + 1
        last = rows[-1]
        assert (last.action, last.actor, last.role, last.to_state) == (
            step["action"],
            f"u-{n}",
            step["role"],
            expected,
        )
        assert last.from_state == rows[-2].to_state
    case = stored(session_factory, case_id)
    assert (case.department, case.outcome, case.closure_type) == ("traffic police", "enforcement", "normal")
    details = [row.details for row in audit_rows(session_factory, case_id)]
    assert details[2] == {"department": "traffic police"}
    assert details[-1] == {"outcome": "enforcement", "closure_type": "normal"}
    with session_factory() as session:
        assert verify_chain(session) == []


def test_reject_voids_the_case_with_its_reason(session_factory: sessionmaker[Session]) -> None:
    case_id = new_case(session_factory)
    with session_factory() as session, session.begin():
        transition_case(
            session,
            config=CONFIG,
            case_id=case_id,
            action="reject",
            actor="op-1",
            role="operator",
            reason="permitted",
            at=NOW,
        )
    assert stored(session_factory, case_id).status == "void"
    last = audit_rows(session_factory, case_id)[-1]
    assert (last.action, last.from_state, last.to_state, last.reason) == (
        "reject",
        "awaiting_verification",
        "void",
        "permitted",
    )


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (
            {"action": "close", "role": "admin", "outcome": "service", "closure_type": "normal"},
            "IllegalTransition",
        ),
        ({"action": "dispatch", "role": "admin", "department": "x"}, "IllegalTransition"),
        ({"action": "reject", "role": "operator"}, "ReasonRequired"),
        ({"action": "reject", "role": "operator", "reason": "looks fine"}, "ReasonRequired"),
        ({"action": "suspend", "role": "operator", "reason": "wait"}, "RoleNotAllowed"),
        ({"action": "confirm", "role": "operator", "department": "x"}, "DetailInvalid"),
    ],
)
def test_a_refused_action_writes_nothing(
    session_factory: sessionmaker[Session], step: dict[str, Any], error: str
) -> None:
    case_id = new_case(session_factory)
    before = stored(session_factory, case_id)
    # The transaction commits after the refusal: that shows nothing was staged either.
    with session_factory() as session, session.begin(), pytest.raises(getattr(workflow, error)):
        transition_case(
            session, config=CONFIG, case_id=case_id, actor="u-1", at=NOW + timedelta(hours=1), **step
        )
    after = stored(session_factory, case_id)
    assert (after.status, after.department, after.updated_at) == (
        before.status,
        before.department,
        before.updated_at,
    )
    assert len(audit_rows(session_factory, case_id)) == 1


def test_an_unknown_case_is_reported(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, pytest.raises(CaseNotFound):
        transition_case(
            session, config=CONFIG, case_id="0" * 32, action="confirm", actor="u", role="operator", at=NOW
        )


def _arguments(action: Action, well_formed: bool, noise: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``action`` needs when ``well_formed``, random ones otherwise."""
    if not well_formed:
        return noise
    needs: dict[Action, dict[str, Any]] = {
        Action.REJECT: {"reason": "duplicate"},
        Action.RETURN_FOR_REWORK: {"reason": "not ours"},
        Action.SUSPEND: {"reason": "road works"},
        Action.DISPATCH: {"department": "sanitation"},
        Action.CLOSE: {"outcome": "service", "closure_type": "special"},
    }
    return needs.get(action, {})


NOISE = st.fixed_dictionaries(
    {},
    optional={
        "reason": st.sampled_from(["false_detection", "because", " "]),
        "department": st.sampled_from(["parks", ""]),
        "outcome": st.sampled_from(["management"]),
        "closure_type": st.sampled_from(["overdue"]),
    },
)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_stored_state_is_a_replay_of_the_successful_actions(
    session_factory: sessionmaker[Session], data: st.DataObject
) -> None:
    case_id = new_case(session_factory)
    expected, successes = CaseState.new(), 0
    for n in range(data.draw(st.integers(0, 14), label="steps")):
        # Mostly actions the table has a row for, so sequences get deep into the workflow.
        legal = workflow.allowed_actions(expected, Role.ADMIN)
        pool = legal if legal and data.draw(st.integers(0, 3)) else list(Action)
        action = data.draw(st.sampled_from(pool), label="action")
        role = data.draw(st.sampled_from(list(Role)), label="role")
        arguments = _arguments(
            action, data.draw(st.integers(0, 4), label="well formed") > 0, data.draw(NOISE)
        )
        at = NOW + timedelta(minutes=n + 1)
        try:
            expected, _ = workflow.apply(expected, action, actor="prop", role=role, at=at, **arguments)
            refused: type[Exception] | None = None
            successes += 1
        except workflow.WorkflowError as exc:
            refused = type(exc)
        with session_factory() as session, session.begin():
            if refused is None:
                transition_case(
                    session,
                    config=CONFIG,
                    case_id=case_id,
                    action=action,
                    actor="prop",
                    role=role,
                    at=at,
                    **arguments,
                )
            else:
                with pytest.raises(refused):
                    transition_case(
                        session,
                        config=CONFIG,
                        case_id=case_id,
                        action=action,
                        actor="prop",
                        role=role,
                        at=at,
                        **arguments,
                    )
    assert case_state(stored(session_factory, case_id)) == expected
    assert len(audit_rows(session_factory, case_id)) == successes + 1


def test_filing_sets_the_deadline_from_the_code_limit_and_closing_stops_the_clock(
    session_factory: sessionmaker[Session],
) -> None:
    case_id = new_case(session_factory)
    code = stored(session_factory, case_id).event_code
    limit = CONFIG.time_limits.limit_for(code)
    for n, (step, _) in enumerate(HAPPY_PATH, start=1):
        with session_factory() as session, session.begin():
            transition_case(
                session, config=CONFIG, case_id=case_id, actor="u", at=NOW + timedelta(hours=n), **step
            )
        if step["action"] == "confirm":
            case = stored(session_factory, case_id)
            filed = NOW + timedelta(hours=1)
            assert case.filed_at.replace(tzinfo=UTC) == filed
            assert case.deadline.replace(tzinfo=UTC) == deadline(filed, limit, CONFIG.calendar)
    case = stored(session_factory, case_id)
    assert case.closed_at.replace(tzinfo=UTC) == NOW + timedelta(hours=len(HAPPY_PATH))
    assert is_overdue(case, NOW + timedelta(days=365)) == (
        case.closed_at.replace(tzinfo=UTC) > case.deadline.replace(tzinfo=UTC)
    )


def test_open_case_past_its_deadline_is_overdue_and_rework_is_counted(
    session_factory: sessionmaker[Session],
) -> None:
    case_id = new_case(session_factory)
    steps = [
        {"action": "confirm", "role": "operator"},
        {"action": "dispatch", "role": "dispatcher", "department": "sanitation"},
        {"action": "return_for_rework", "role": "dispatcher", "reason": "wrong department"},
        {"action": "dispatch", "role": "dispatcher", "department": "traffic police"},
    ]
    for step in steps:
        with session_factory() as session, session.begin():
            transition_case(session, config=CONFIG, case_id=case_id, actor="u", at=NOW, **step)
    case = stored(session_factory, case_id)
    assert case.rework_count == 1
    deadline_at = case.deadline.replace(tzinfo=UTC)
    assert not is_overdue(case, deadline_at)
    assert is_overdue(case, deadline_at + timedelta(seconds=1))
