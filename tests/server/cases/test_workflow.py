"""Case state machine: the full (state x action) table, roles, reasons, suspend/resume, invariants."""

from __future__ import annotations

from contextlib import nullcontext as does_not_raise
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from curbwatch.server.cases.workflow import (
    OPEN_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    Action,
    CaseState,
    CaseStatus,
    ClosureType,
    DetailInvalid,
    IllegalTransition,
    Outcome,
    ReasonRequired,
    Role,
    RoleNotAllowed,
    Transition,
    WorkflowError,
    allowed_actions,
    apply,
)

AT = datetime(2025, 5, 6, 9, 30, tzinfo=UTC)
S, A = CaseStatus, Action

# What each action needs to succeed, so the table test exercises only state legality.
GOOD_KWARGS: dict[Action, dict[str, Any]] = {
    A.CONFIRM: {},
    A.REJECT: {"reason": "false_detection"},
    A.DISPATCH: {"department": "sanitation"},
    A.START: {},
    A.REPORT_HANDLED: {},
    A.REQUEST_CHECK: {},
    A.CLOSE: {"outcome": Outcome.SERVICE, "closure_type": ClosureType.NORMAL},
    A.RETURN_FOR_REWORK: {"reason": "bins still overflowing"},
    A.SUSPEND: {"reason": "road works until June"},
    A.RESUME: {},
}

# The expected table, written out independently of TRANSITIONS: (from, action) -> to.
EXPECTED: dict[tuple[CaseStatus, Action], CaseStatus] = {
    (S.AWAITING_VERIFICATION, A.CONFIRM): S.FILED,
    (S.AWAITING_VERIFICATION, A.REJECT): S.VOID,
    (S.FILED, A.DISPATCH): S.DISPATCHED,
    (S.DISPATCHED, A.START): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.REPORT_HANDLED): S.HANDLED,
    (S.HANDLED, A.REQUEST_CHECK): S.CHECKING,
    (S.CHECKING, A.CLOSE): S.CLOSED,
    (S.CHECKING, A.RETURN_FOR_REWORK): S.IN_PROGRESS,
    (S.DISPATCHED, A.RETURN_FOR_REWORK): S.FILED,
    **{(state, A.SUSPEND): S.SUSPENDED for state in OPEN_STATES},
    (S.SUSPENDED, A.RESUME): S.DISPATCHED,  # the fixture below suspends from dispatched
}


def make_case(state: CaseStatus) -> CaseState:
    """A consistent case in ``state``."""
    if state is S.SUSPENDED:
        return CaseState(state=state, suspended_from=S.DISPATCHED, department="sanitation")
    if state is S.CLOSED:
        return CaseState(state=state, outcome=Outcome.SERVICE, closure_type=ClosureType.NORMAL)
    return CaseState(state=state)


def _table_rows() -> list[Any]:
    rows = []
    for state in CaseStatus:
        for action in Action:
            to_state = EXPECTED.get((state, action))
            expectation = (
                does_not_raise() if to_state is not None else pytest.raises(IllegalTransition, match="cannot")
            )
            rows.append(pytest.param(state, action, to_state, expectation, id=f"{state}-{action}"))
    return rows


def test_expected_table_matches_module_table() -> None:
    assert set(TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize(("state", "action", "to_state", "expectation"), _table_rows())
def test_every_action_from_every_state(
    state: CaseStatus, action: Action, to_state: CaseStatus | None, expectation: Any
) -> None:
    case = make_case(state)
    with expectation:
        new, step = apply(case, action, actor="u1", role=Role.ADMIN, at=AT, **GOOD_KWARGS[action])
        assert new.state is to_state
        assert step == Transition(state, to_state, action, "u1", Role.ADMIN, step.reason, AT)


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
def test_terminal_states_accept_nothing(state: CaseStatus) -> None:
    assert allowed_actions(make_case(state), Role.ADMIN) == []
    for action in Action:
        with pytest.raises(IllegalTransition, match="terminal"):
            apply(make_case(state), action, actor="u1", role=Role.ADMIN, at=AT, **GOOD_KWARGS[action])


ROLE_ROWS = [
    (S.AWAITING_VERIFICATION, A.CONFIRM, Role.OPERATOR, does_not_raise()),
    (S.AWAITING_VERIFICATION, A.REJECT, Role.OPERATOR, does_not_raise()),
    (S.FILED, A.DISPATCH, Role.OPERATOR, pytest.raises(RoleNotAllowed, match="dispatcher or above")),
    (S.FILED, A.DISPATCH, Role.DISPATCHER, does_not_raise()),
    (S.DISPATCHED, A.START, Role.OPERATOR, pytest.raises(RoleNotAllowed)),
    (S.DISPATCHED, A.START, Role.DISPATCHER, does_not_raise()),
    (S.HANDLED, A.REQUEST_CHECK, Role.OPERATOR, does_not_raise()),
    (S.CHECKING, A.CLOSE, Role.OPERATOR, pytest.raises(RoleNotAllowed)),
    (S.CHECKING, A.CLOSE, Role.DISPATCHER, pytest.raises(RoleNotAllowed, match="supervisor or above")),
    (S.CHECKING, A.CLOSE, Role.SUPERVISOR, does_not_raise()),
    (S.CHECKING, A.CLOSE, Role.ADMIN, does_not_raise()),
    (S.CHECKING, A.RETURN_FOR_REWORK, Role.OPERATOR, pytest.raises(RoleNotAllowed)),
    (S.FILED, A.SUSPEND, Role.DISPATCHER, pytest.raises(RoleNotAllowed)),
    (S.FILED, A.SUSPEND, Role.SUPERVISOR, does_not_raise()),
    (S.SUSPENDED, A.RESUME, Role.DISPATCHER, pytest.raises(RoleNotAllowed)),
    (S.SUSPENDED, A.RESUME, Role.SUPERVISOR, does_not_raise()),
]


@pytest.mark.parametrize(("state", "action", "role", "expectation"), ROLE_ROWS)
def test_roles(state: CaseStatus, action: Action, role: Role, expectation: Any) -> None:
    with expectation:
        apply(make_case(state), action, actor="u1", role=role, at=AT, **GOOD_KWARGS[action])


def test_illegal_state_is_reported_before_role() -> None:
    with pytest.raises(IllegalTransition):
        apply(make_case(S.FILED), A.CLOSE, actor="u1", role=Role.OPERATOR, at=AT)


REASON_ROWS = [
    (S.AWAITING_VERIFICATION, A.REJECT, None, pytest.raises(ReasonRequired, match="false_detection")),
    (S.AWAITING_VERIFICATION, A.REJECT, "looks fine", pytest.raises(ReasonRequired)),
    (S.AWAITING_VERIFICATION, A.REJECT, "duplicate", does_not_raise()),
    (S.AWAITING_VERIFICATION, A.REJECT, "permitted", does_not_raise()),
    (S.CHECKING, A.RETURN_FOR_REWORK, None, pytest.raises(ReasonRequired, match="written reason")),
    (S.CHECKING, A.RETURN_FOR_REWORK, "   ", pytest.raises(ReasonRequired)),
    (S.DISPATCHED, A.RETURN_FOR_REWORK, "", pytest.raises(ReasonRequired)),
    (S.DISPATCHED, A.RETURN_FOR_REWORK, "not our department", does_not_raise()),
    (S.IN_PROGRESS, A.SUSPEND, None, pytest.raises(ReasonRequired)),
    (S.IN_PROGRESS, A.SUSPEND, "awaiting permit", does_not_raise()),
    (S.AWAITING_VERIFICATION, A.CONFIRM, None, does_not_raise()),
]


@pytest.mark.parametrize(("state", "action", "reason", "expectation"), REASON_ROWS)
def test_reasons(state: CaseStatus, action: Action, reason: str | None, expectation: Any) -> None:
    kwargs = {**GOOD_KWARGS[action], "reason": reason}
    with expectation:
        _, step = apply(make_case(state), action, actor="u1", role=Role.ADMIN, at=AT, **kwargs)
        assert step.reason == (reason.strip() if reason else None)


DETAIL_ROWS = [
    (S.FILED, A.DISPATCH, {}, pytest.raises(DetailInvalid, match="needs a department")),
    (S.FILED, A.DISPATCH, {"department": "  "}, pytest.raises(DetailInvalid)),
    (
        S.CHECKING,
        A.CLOSE,
        {"closure_type": ClosureType.NORMAL},
        pytest.raises(DetailInvalid, match="outcome"),
    ),
    (
        S.CHECKING,
        A.CLOSE,
        {"outcome": Outcome.ENFORCEMENT},
        pytest.raises(DetailInvalid, match="closure_type"),
    ),
    (S.AWAITING_VERIFICATION, A.CONFIRM, {"department": "x"}, pytest.raises(DetailInvalid, match="not take")),
    (S.HANDLED, A.REQUEST_CHECK, {"outcome": Outcome.SERVICE}, pytest.raises(DetailInvalid)),
]


@pytest.mark.parametrize(("state", "action", "kwargs", "expectation"), DETAIL_ROWS)
def test_details(state: CaseStatus, action: Action, kwargs: dict[str, Any], expectation: Any) -> None:
    with expectation:
        apply(make_case(state), action, actor="u1", role=Role.ADMIN, at=AT, **kwargs)


def test_happy_path_records_department_outcome_and_closure() -> None:
    case = CaseState.new()
    steps = [
        (A.CONFIRM, Role.OPERATOR, {}),
        (A.DISPATCH, Role.DISPATCHER, {"department": "sanitation"}),
        (A.START, Role.DISPATCHER, {}),
        (A.REPORT_HANDLED, Role.DISPATCHER, {}),
        (A.REQUEST_CHECK, Role.OPERATOR, {}),
        (A.CLOSE, Role.SUPERVISOR, {"outcome": Outcome.MANAGEMENT, "closure_type": ClosureType.OVERDUE}),
    ]
    for action, role, kwargs in steps:
        case, _ = apply(case, action, actor="u1", role=role, at=AT, **kwargs)
    assert case == CaseState(
        state=S.CLOSED, outcome=Outcome.MANAGEMENT, closure_type=ClosureType.OVERDUE, department="sanitation"
    )
    assert case.is_terminal


def test_not_our_department_clears_department() -> None:
    case = CaseState(state=S.DISPATCHED, department="roads")
    case, step = apply(
        case, A.RETURN_FOR_REWORK, actor="d1", role=Role.DISPATCHER, reason="not our department", at=AT
    )
    assert (case.state, case.department, step.to_state) == (S.FILED, None, S.FILED)


@pytest.mark.parametrize("state", sorted(OPEN_STATES))
def test_suspend_then_resume_returns_to_suspended_from(state: CaseStatus) -> None:
    case = CaseState(state=state, department="parks")
    suspended, step = apply(case, A.SUSPEND, actor="s1", role=Role.SUPERVISOR, reason=" on hold ", at=AT)
    assert (suspended.state, suspended.suspended_from, step.reason) == (S.SUSPENDED, state, "on hold")
    later = AT + timedelta(days=3)
    resumed, step = apply(suspended, A.RESUME, actor="s1", role=Role.SUPERVISOR, at=later)
    assert resumed == case
    assert (step.from_state, step.to_state, step.at) == (S.SUSPENDED, state, later)


def test_cannot_suspend_a_suspended_case() -> None:
    with pytest.raises(IllegalTransition):
        apply(make_case(S.SUSPENDED), A.SUSPEND, actor="s1", role=Role.ADMIN, reason="again", at=AT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": S.SUSPENDED},
        {"state": S.FILED, "suspended_from": S.FILED},
        {"state": S.SUSPENDED, "suspended_from": S.CLOSED},
        {"state": S.CLOSED},
        {"state": S.CHECKING, "outcome": Outcome.SERVICE},
    ],
)
def test_inconsistent_case_state_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CaseState(**kwargs)


def test_actor_and_time_are_checked() -> None:
    with pytest.raises(ValueError, match="actor"):
        apply(CaseState.new(), A.CONFIRM, actor=" ", role=Role.OPERATOR, at=AT)
    with pytest.raises(ValueError, match="timezone-aware"):
        apply(CaseState.new(), A.CONFIRM, actor="u1", role=Role.OPERATOR, at=datetime(2025, 5, 6, 9))


def test_allowed_actions_depend_on_role() -> None:
    assert allowed_actions(make_case(S.CHECKING), Role.OPERATOR) == []
    assert allowed_actions(make_case(S.CHECKING), Role.DISPATCHER) == [A.RETURN_FOR_REWORK]
    assert allowed_actions(make_case(S.CHECKING), Role.SUPERVISOR) == [
        A.CLOSE,
        A.RETURN_FOR_REWORK,
        A.SUSPEND,
    ]


REASONS = st.one_of(
    st.none(),
    st.sampled_from(["false_detection", "duplicate", "not fixed", " ", ""]),
    st.text(max_size=8),
)
STEP = st.tuples(
    st.sampled_from(list(Action)),
    st.sampled_from(list(Role)),
    REASONS,
    st.sampled_from([None, "sanitation"]),
    st.sampled_from([None, Outcome.SERVICE]),
    st.sampled_from([None, ClosureType.SPECIAL]),
)


@seed(20250506)
@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=40))
def test_random_sequences_stay_inside_the_table(steps: list[tuple[Any, ...]]) -> None:
    case = CaseState.new()
    for action, role, reason, department, outcome, closure_type in steps:
        before = case
        try:
            case, step = apply(
                case,
                action,
                actor="fuzz",
                role=role,
                reason=reason,
                at=AT,
                department=department,
                outcome=outcome,
                closure_type=closure_type,
            )
        except WorkflowError:
            assert case is before
            continue
        assert not before.is_terminal, "left a terminal state"
        assert (before.state, action) in TRANSITIONS
        assert (step.from_state, step.to_state, step.action) == (before.state, case.state, action)
        rule = TRANSITIONS[(before.state, action)]
        expected_to = rule.to_state if rule.to_state is not None else before.suspended_from
        assert case.state is expected_to
        assert role.at_least(rule.min_role)
