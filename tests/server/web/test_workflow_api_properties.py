"""Property: no sequence of API calls reaches an illegal state or skips the audit log.

Random calls (any action, any role, details right, wrong or malformed) go to one case through the
REST API. After each call the stored state must equal the replay of the accepted calls through the
pure ``workflow.apply``, the answer must be the one the contract gives (never a 500), the audit log
must hold exactly one entry per applied transition, and the hash chain must stay intact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from curbwatch.server.audit import verify_chain
from curbwatch.server.cases import workflow
from curbwatch.server.cases.service import case_state
from curbwatch.server.cases.workflow import (
    Action,
    CaseState,
    ClosureType,
    DetailInvalid,
    IllegalTransition,
    Outcome,
    ReasonRequired,
    RejectReason,
    Role,
    RoleNotAllowed,
    WorkflowError,
)
from curbwatch.server.tables import AuditLog, Case
from tests.server.web.case_factory import api_client, seed_case
from tests.server.web.conftest import WebApp

ACTIONS = [a.value for a in Action]
STATUS_OF_ERROR: dict[type[WorkflowError], int] = {
    IllegalTransition: 409,
    RoleNotAllowed: 403,
    ReasonRequired: 422,
    DetailInvalid: 422,
}


def right_details(action: Action, departments: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Details the action takes, as a careful client would send them."""
    if action is Action.REJECT:
        return st.fixed_dictionaries({"reason": st.sampled_from([r.value for r in RejectReason])})
    if action is Action.DISPATCH:
        return st.fixed_dictionaries({"department": st.sampled_from(departments)})
    if action is Action.CLOSE:
        return st.fixed_dictionaries(
            {
                "outcome": st.sampled_from([o.value for o in Outcome]),
                "closure_type": st.sampled_from([c.value for c in ClosureType]),
            }
        )
    if action in (Action.RETURN_FOR_REWORK, Action.SUSPEND):
        return st.fixed_dictionaries({"reason": st.sampled_from(["still there", "road works"])})
    return st.just({})


def any_details(departments: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-typed details, right or wrong for the action."""
    return st.fixed_dictionaries(
        {},
        optional={
            "reason": st.sampled_from([*(r.value for r in RejectReason), "", "  ", "still there", None]),
            "department": st.sampled_from([*departments, "", "the mayor", None]),
            "outcome": st.sampled_from([*(o.value for o in Outcome), None]),
            "closure_type": st.sampled_from([*(c.value for c in ClosureType), None]),
        },
    )


MALFORMED: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"action": st.text(max_size=12).filter(lambda s: s not in ACTIONS)}),
    st.fixed_dictionaries({"action": st.sampled_from(ACTIONS), "note": st.text(max_size=5)}),
    st.fixed_dictionaries({"action": st.sampled_from(ACTIONS), "reason": st.integers()}),
    st.fixed_dictionaries({"action": st.sampled_from(ACTIONS), "reason": st.just("x" * 2001)}),
    st.fixed_dictionaries({"action": st.sampled_from(ACTIONS), "outcome": st.just("perfect")}),
)


@st.composite
def calls(draw: st.DrawFn, model: CaseState, departments: list[str]) -> tuple[Role, dict[str, Any], bool]:
    """(role, body, well_formed); half the calls take an action the case's state allows, so that
    sequences reach deep into the workflow instead of bouncing off its first state."""
    role = draw(st.sampled_from(list(reversed(Role))))  # admin first: the simplest draw is allowed
    kind = draw(st.sampled_from(["next", "next", "next", "next", "right", "any", "malformed"]))
    if kind == "malformed":
        return role, draw(MALFORMED), False
    possible = workflow.allowed_actions(model, Role.ADMIN)
    action = draw(st.sampled_from(possible if kind == "next" and possible else list(Action)))
    details = draw(any_details(departments) if kind == "any" else right_details(action, departments))
    return role, {"action": action.value, **details}, True


def route_refuses(body: dict[str, Any], departments: list[str]) -> bool:
    """The API's own checks before the workflow's: the city's departments, a check without details."""
    action = Action(body["action"])
    department = (body.get("department") or "").strip()
    if action is Action.DISPATCH and department and department not in departments:
        return True
    return action is Action.REQUEST_CHECK and any(v is not None for k, v in body.items() if k != "action")


def replay(
    model: CaseState, body: dict[str, Any], role: Role, recheck: bool
) -> tuple[CaseState, int] | WorkflowError:
    """The pure workflow's answer: the next state and how many transitions, or the refusal."""
    at = datetime(2026, 11, 27, tzinfo=UTC)
    action = Action(body["action"])
    try:
        after, _ = workflow.apply(
            model,
            action,
            actor="replay",
            role=role,
            reason=body.get("reason"),
            at=at,
            department=body.get("department"),
            outcome=body.get("outcome"),
            closure_type=body.get("closure_type"),
        )
    except WorkflowError as exc:
        return exc
    if action is Action.REPORT_HANDLED and recheck:
        after, _ = workflow.apply(after, Action.REQUEST_CHECK, actor="replay", role=role, at=at)
        return after, 2
    return after, 1


def stored(web: WebApp, case_id: str) -> tuple[CaseState, int]:
    with web.session_factory() as session:
        case = session.get(Case, case_id)
        assert case is not None
        entries = session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.case_id == case_id)
        )
        return case_state(case), int(entries or 0)


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_api_calls_replay_through_the_pure_workflow(web: WebApp, data: st.DataObject) -> None:
    departments = list(web.context.config.departments)
    recheck = web.context.config.recheck_on_handled
    clients = {role: api_client(web, role.value) for role in Role}
    case = seed_case(web)
    model, entries = stored(web, case.id)
    assert model == CaseState.new() and entries == 1  # open_case
    for _ in range(data.draw(st.integers(min_value=1, max_value=20), label="calls")):
        role, body, well_formed = data.draw(calls(model, departments))
        response = clients[role].post(f"/api/v1/cases/{case.id}/actions", json=body)
        if not well_formed or route_refuses(body, departments):
            expected: tuple[CaseState, int] | WorkflowError | None = None
            status = 422
        else:
            expected = replay(model, body, role, recheck)
            status = STATUS_OF_ERROR[type(expected)] if isinstance(expected, WorkflowError) else 200
        assert response.status_code == status, (role, body, response.text)
        if isinstance(expected, tuple):
            model, transitions = expected
            entries += transitions
            assert response.json()["status"] == model.state.value
        assert stored(web, case.id) == (model, entries), (role, body)
        event(f"reached {model.state.value}")  # see --hypothesis-show-statistics
    with web.session_factory() as session:
        assert verify_chain(session) == []
