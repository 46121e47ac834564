"""Every route asks for a sign-in, every unsafe request of a session needs its CSRF token, and every
case action checks the caller's role."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from curbwatch.server.cases.service import transition_case
from curbwatch.server.cases.workflow import TRANSITIONS, Action, CaseStatus, Role
from curbwatch.server.web.app import create_app
from tests.server.web.case_factory import NOW, api_client, seed_case
from tests.server.web.conftest import WebApp

# What answers without a sign-in, and why.
PUBLIC_ROUTES = {
    ("GET", "/login"),  # the sign-in form
    ("POST", "/login"),  # signing in
    ("POST", "/api/v1/auth/token"),  # API sign-in
    ("GET", "/openapi.json"),  # the API description (no data)
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/"),  # a redirect to /queue, which asks for a sign-in
}
PUBLIC_MOUNTS = {"/static"}  # our own CSS and JavaScript
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DEPARTMENT = "城管执法 enforcement"

ACTION_BODIES: dict[Action, dict[str, Any]] = {
    Action.CONFIRM: {},
    Action.REJECT: {"reason": "duplicate"},
    Action.DISPATCH: {"department": DEPARTMENT},
    Action.START: {},
    Action.REPORT_HANDLED: {},
    Action.REQUEST_CHECK: {},
    Action.CLOSE: {"outcome": "service", "closure_type": "normal"},
    Action.RETURN_FOR_REWORK: {"reason": "still there"},
    Action.SUSPEND: {"reason": "road works"},
    Action.RESUME: {},
}
PATH_TO: dict[CaseStatus, list[Action]] = {
    CaseStatus.AWAITING_VERIFICATION: [],
    CaseStatus.FILED: [Action.CONFIRM],
    CaseStatus.DISPATCHED: [Action.CONFIRM, Action.DISPATCH],
    CaseStatus.IN_PROGRESS: [Action.CONFIRM, Action.DISPATCH, Action.START],
    CaseStatus.HANDLED: [Action.CONFIRM, Action.DISPATCH, Action.START, Action.REPORT_HANDLED],
    CaseStatus.CHECKING: [
        Action.CONFIRM,
        Action.DISPATCH,
        Action.START,
        Action.REPORT_HANDLED,
        Action.REQUEST_CHECK,
    ],
    CaseStatus.CLOSED: [
        Action.CONFIRM,
        Action.DISPATCH,
        Action.START,
        Action.REPORT_HANDLED,
        Action.REQUEST_CHECK,
        Action.CLOSE,
    ],
    CaseStatus.VOID: [Action.REJECT],
    CaseStatus.SUSPENDED: [Action.CONFIRM, Action.SUSPEND],
}


def routes(web: WebApp) -> list[tuple[str, str]]:
    """Every (method, path template) the app answers, HEAD aside, mounts excluded."""
    app = create_app(web.context.settings, web.session_factory, context=web.context)
    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def concrete(path: str) -> str:
    """A path template with its parameters filled in (a well-formed sha256 where one is asked)."""
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "ab" * 32 if m.group(1) == "sha256" else "x1", path)


def mounts(web: WebApp) -> set[str]:
    app = create_app(web.context.settings, web.session_factory, context=web.context)
    return {route.path for route in iter_route_contexts(app.routes) if not route.methods}


def test_the_allow_list_names_real_routes_only(web: WebApp) -> None:
    assert set(routes(web)) >= PUBLIC_ROUTES
    assert mounts(web) == PUBLIC_MOUNTS


def test_every_other_route_asks_for_a_sign_in(web: WebApp) -> None:
    client = web.client()
    checked = 0
    for method, path in routes(web):
        if (method, path) in PUBLIC_ROUTES:
            continue
        for headers in ({}, {"Authorization": "Bearer forged.token.value"}):
            response = client.request(method, concrete(path), headers=headers, json={})
            redirected = response.status_code == 303 and response.headers["location"].startswith("/login")
            assert response.status_code == 401 or redirected, (method, path, response.status_code)
        checked += 1
    assert checked >= 10  # the cases API, evidence and the pages at least


def test_unsafe_requests_of_a_session_need_the_csrf_token(web: WebApp) -> None:
    client = web.signed_in("admin")
    token = client.headers.pop("X-CSRF-Token")
    unsafe = [(m, p) for m, p in routes(web) if m in UNSAFE_METHODS and (m, p) not in PUBLIC_ROUTES]
    assert (("POST", "/api/v1/cases/{case_id}/actions")) in unsafe
    for method, path in unsafe:
        for headers in ({}, {"X-CSRF-Token": token[::-1]}):
            response = client.request(method, concrete(path), headers=headers, json={})
            assert response.status_code == 403, (method, path, response.status_code)
            assert "CSRF" in response.json()["detail"]
    # The same session with its token is signed in (the refusals above were the token's doing).
    assert client.get("/api/v1/auth/me").status_code == 200


def test_a_csrf_refusal_changes_nothing(web: WebApp) -> None:
    case = seed_case(web)
    client = web.signed_in("operator")
    client.headers.pop("X-CSRF-Token")
    assert client.post(f"/api/v1/cases/{case.id}/actions", json={"action": "confirm"}).status_code == 403
    assert (
        web.signed_in("operator").get(f"/api/v1/cases/{case.id}").json()["status"] == "awaiting_verification"
    )


def case_in(web: WebApp, state: CaseStatus) -> str:
    """A new case brought to ``state`` by an admin, through the service."""
    case_id = seed_case(web).id
    for action in PATH_TO[state]:
        with web.session_factory() as session, session.begin():
            transition_case(
                session,
                case_id=case_id,
                action=action,
                actor="setup",
                role=Role.ADMIN,
                config=web.context.config,
                at=NOW,
                **ACTION_BODIES[action],
            )
    return case_id


@pytest.mark.parametrize(("state", "action"), sorted(TRANSITIONS), ids=lambda v: str(v))
def test_each_allowed_action_checks_the_role(web: WebApp, state: CaseStatus, action: Action) -> None:
    minimum = TRANSITIONS[(state, action)].min_role
    for role in Role:
        case_id = case_in(web, state)
        response = api_client(web, role.value).post(
            f"/api/v1/cases/{case_id}/actions", json={"action": action.value, **ACTION_BODIES[action]}
        )
        expected = 200 if role.at_least(minimum) else 403
        assert response.status_code == expected, (role, response.text)
        if expected == 403:
            assert f"needs role {minimum.value}" in response.json()["detail"]


@pytest.mark.parametrize("state", list(CaseStatus))
def test_actions_outside_the_table_are_409_for_every_role(web: WebApp, state: CaseStatus) -> None:
    case_id = case_in(web, state)
    illegal = [a for a in Action if (state, a) not in TRANSITIONS]
    for role in (Role.OPERATOR, Role.ADMIN):
        client = api_client(web, role.value)
        for action in illegal:
            response = client.post(
                f"/api/v1/cases/{case_id}/actions", json={"action": action.value, **ACTION_BODIES[action]}
            )
            assert response.status_code == 409, (role, action, response.text)
    assert client.get(f"/api/v1/cases/{case_id}").json()["status"] == state.value
