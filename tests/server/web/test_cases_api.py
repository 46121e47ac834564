"""The cases REST API: meta, the filtered and paged list, one case in full, and workflow actions."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from curbwatch.server.cases.service import is_overdue
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.device_link import DeviceLinkError
from curbwatch.server.tables import AuditLog, Case, CaseCheck
from tests.server.factories import event_document
from tests.server.web.case_factory import (
    NOW,
    FakeClock,
    SeededCase,
    api_client,
    seed_case,
    store_event,
    with_clock,
)
from tests.server.web.conftest import WebApp

DEPARTMENT = CaseServerConfig().departments[0]


def act(client: TestClient, case_id: str, action: str, **body: Any) -> Any:
    return client.post(f"/api/v1/cases/{case_id}/actions", json={"action": action, **body})


def ok(client: TestClient, case_id: str, action: str, **body: Any) -> dict[str, Any]:
    response = act(client, case_id, action, **body)
    assert response.status_code == 200, response.text
    return response.json()


def listed(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/cases", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def audit_actions(web: WebApp, case_id: str) -> list[str]:
    with web.session_factory() as session:
        return list(
            session.scalars(select(AuditLog.action).where(AuditLog.case_id == case_id).order_by(AuditLog.id))
        )


def test_meta_gives_the_citys_vocabulary(web: WebApp) -> None:
    assert web.client().get("/api/v1/meta").status_code == 401
    meta = api_client(web, "operator").get("/api/v1/meta").json()
    config = web.context.config
    assert meta["city"] == config.city
    assert meta["event_codes"] == config.code_names()
    assert meta["departments"] == config.departments
    assert meta["reject_reasons"] == ["false_detection", "not_a_violation", "permitted", "duplicate"]
    assert meta["outcomes"] == ["service", "management", "enforcement"]
    assert meta["closure_types"] == ["normal", "overdue", "erroneous", "special"]
    assert meta["roles"] == ["operator", "dispatcher", "supervisor", "admin"]


def test_list_item_describes_the_case(web: WebApp) -> None:
    case = seed_case(web, location=[31.23, 121.47])
    (item,) = listed(api_client(web, "operator"), camera_id=case.camera_id)
    assert item["id"] == case.id
    assert item["status"] == "awaiting_verification"
    assert (item["event_code"], item["rule"], item["zone"], item["device_id"]) == (
        "0505",
        "illegal_parking",
        "kerb",
        case.device_id,
    )
    assert item["location"] == [31.23, 121.47]
    assert item["created_at"] == "2026-11-27T02:00:00Z"
    assert item["opened_at"] == "2026-11-27T01:00:00Z"
    assert item["deadline"] is None and item["overdue"] is False
    assert item["episode_count"] == 1
    assert item["thumbnail_url"] == f"/evidence/{case.annotated}"


def test_episode_count_follows_folded_episodes(web: WebApp) -> None:
    case = seed_case(web)
    later = event_document(
        case.device_id,
        camera_id=case.camera_id,
        episode_start="2026-11-27T01:05:00+00:00",
        ts="2026-11-27T01:07:00+00:00",
    )
    assert store_event(web, later, NOW) == case.id
    (item,) = listed(api_client(web, "operator"), camera_id=case.camera_id)
    assert item["episode_count"] == 2
    assert item["thumbnail_url"] == f"/evidence/{case.annotated}"  # still the first event's


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"park", "vend", "bin", "park-late"}),
        ({"rule": "unlicensed_vending"}, {"vend"}),
        ({"zone": "kerb-b"}, {"vend"}),
        ({"event_code": "0102"}, {"bin"}),
        ({"status": "filed"}, {"park"}),
        ({"status": "awaiting_verification"}, {"vend", "bin", "park-late"}),
        ({"created_after": (NOW + timedelta(minutes=5)).isoformat()}, {"park-late"}),
    ],
)
def test_filters_narrow_the_list(web: WebApp, params: dict[str, str], expected: set[str]) -> None:
    camera = f"cam-{uuid.uuid4().hex[:12]}"
    names = {
        seed_case(web, camera_id=camera, zone="kerb-a").id: "park",
        seed_case(
            web,
            camera_id=camera,
            zone="kerb-b",
            rule="unlicensed_vending",
            violation="unlicensed_vending",
            event_code="0501",
        ).id: "vend",
        seed_case(
            web,
            camera_id=camera,
            zone="bins",
            rule="bin_overflow",
            violation="bin_overflow",
            event_code="0102",
        ).id: "bin",
        seed_case(web, camera_id=camera, zone="kerb-c", at=NOW + timedelta(minutes=10)).id: "park-late",
    }
    client = api_client(web, "operator")
    park = next(case_id for case_id, name in names.items() if name == "park")
    ok(client, park, "confirm")
    assert {names[item["id"]] for item in listed(client, camera_id=camera, **params)} == expected


@pytest.mark.parametrize("by", ["camera_id", "zone"])
def test_pages_walk_every_case_once_oldest_first(web: WebApp, by: str) -> None:
    # By camera, the camera's index orders a page; by zone alone, the merge of the status ranges.
    place = f"place-{uuid.uuid4().hex[:12]}"

    def new(n: int, at: datetime) -> str:
        where = {"camera_id": place, "zone": f"z{n}"} if by == "camera_id" else {"zone": place}
        return seed_case(web, at=at, **where).id

    times = [NOW + timedelta(minutes=m) for m in (3, 1, 2, 2, 0)]  # two share a created_at
    ids = [new(n, at) for n, at in enumerate(times)]
    expected = [case_id for _, case_id in sorted(zip(times, ids, strict=True))]
    client = api_client(web, "operator")
    ok(client, ids[1], "confirm")  # pages mix states
    ok(client, ids[3], "reject", reason="duplicate")
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {by: place, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/v1/cases", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # A case opened meanwhile, later than all others, lands at the end without shifting pages.
        if len(seen) == 2:
            expected.append(new(9, NOW + timedelta(hours=1)))
    assert seen == expected


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJ4Il0"},  # valid base64 of ["x"]
        {"limit": 0},
        {"limit": 1000},
        {"status": "bogus"},
        {"rule": "jaywalking"},
        {"event_code": "05a5"},
        {"overdue": "maybe"},
        {"created_after": "2026-11-27T01:00:00"},  # no offset
        {"created_after": "yesterday"},
    ],
)
def test_bad_list_parameters_are_422(web: WebApp, params: dict[str, Any]) -> None:
    response = api_client(web, "operator").get("/api/v1/cases", params=params)
    assert response.status_code == 422
    assert response.json()["detail"]


def test_overdue_filter_agrees_with_is_overdue(web: WebApp) -> None:
    clock = FakeClock()
    app = with_clock(web, clock)
    camera = f"cam-{uuid.uuid4().hex[:12]}"
    late, suspended, closed_late, waiting, fresh = (
        seed_case(app, camera_id=camera, zone=z).id for z in "abcde"
    )
    supervisor = api_client(app, "supervisor")
    for case_id in (late, suspended, closed_late):
        ok(supervisor, case_id, "confirm")  # 0505: two continuous hours from now
    clock.advance(hours=1)
    ok(supervisor, suspended, "suspend", reason="waiting for the tow truck")
    clock.advance(hours=2)  # past those deadlines
    for action, extra in [
        ("dispatch", {"department": DEPARTMENT}),
        ("start", {}),
        ("report_handled", {}),
        ("close", {"outcome": "enforcement", "closure_type": "overdue"}),
    ]:
        ok(supervisor, closed_late, action, **extra)
    ok(supervisor, fresh, "confirm")  # its deadline is still ahead
    overdue = {item["id"] for item in listed(supervisor, camera_id=camera, overdue="true")}
    not_overdue = {item["id"] for item in listed(supervisor, camera_id=camera, overdue="false")}
    assert overdue == {late, suspended, closed_late}
    assert not_overdue == {waiting, fresh}
    with web.session_factory() as session:
        for case_id in overdue | not_overdue:
            case = session.get(Case, case_id)
            assert case is not None and is_overdue(case, clock()) == (case_id in overdue)
    flags = {item["id"]: item["overdue"] for item in listed(supervisor, camera_id=camera)}
    assert flags == {case_id: case_id in overdue for case_id in overdue | not_overdue}


def test_detail_shows_events_evidence_timeline_and_actions(web: WebApp) -> None:
    case = seed_case(web)
    detail = api_client(web, "operator").get(f"/api/v1/cases/{case.id}").json()
    (event,) = detail["events"]
    assert event["event_id"] == case.event_ids[0] and event["type"] == "start"
    assert event["dwell_s"] == 120.0 and event["objects"][0]["track_id"] == 7
    assert [(e["role"], e["sha256"]) for e in detail["evidence"]] == [
        ("annotated", case.annotated),
        ("crop", case.crop),
    ]
    assert detail["evidence"][1]["track_id"] == 7
    assert all(e["url"] == f"/evidence/{e['sha256']}" for e in detail["evidence"])
    assert [(t["action"], t["to_state"]) for t in detail["timeline"]] == [
        ("open_case", "awaiting_verification")
    ]
    assert detail["allowed_actions"] == ["confirm", "reject"]
    assert detail["checks"] == []
    assert detail["reject_reasons"] == ["false_detection", "not_a_violation", "permitted", "duplicate"]


def test_supervisors_also_see_the_restricted_original_and_more_actions(web: WebApp) -> None:
    case = seed_case(web)
    detail = api_client(web, "supervisor").get(f"/api/v1/cases/{case.id}").json()
    assert [(e["role"], e["restricted"]) for e in detail["evidence"]] == [
        ("clean", True),
        ("annotated", False),
        ("crop", False),
    ]
    assert detail["allowed_actions"] == ["confirm", "reject", "suspend"]


def test_unknown_case_is_404(web: WebApp) -> None:
    client = api_client(web, "admin")
    assert client.get("/api/v1/cases/no-such-case").status_code == 404
    response = act(client, uuid.uuid4().hex, "confirm")
    assert response.status_code == 404 and "no case" in response.json()["detail"]


def test_the_whole_workflow_through_the_api(web: WebApp) -> None:
    clock = FakeClock()
    app = with_clock(web, clock)
    case = seed_case(app)
    operator = app.signed_in("operator")  # a browser session, CSRF token and all
    dispatcher, supervisor = api_client(app, "dispatcher"), api_client(app, "supervisor")
    filed = ok(operator, case.id, "confirm")
    assert filed["status"] == "filed" and filed["filed_at"] == "2026-11-27T02:00:00Z"
    assert filed["deadline"] == "2026-11-27T04:00:00Z"  # 0505: two continuous hours
    clock.advance(minutes=10)
    dispatched = ok(dispatcher, case.id, "dispatch", department=f"  {DEPARTMENT} ")
    assert dispatched["department"] == DEPARTMENT
    ok(dispatcher, case.id, "start")
    handled = ok(dispatcher, case.id, "report_handled")
    # The city re-checks handled cases: the camera is asked for a fresh image at once.
    assert handled["status"] == "checking"
    (check,) = handled["checks"]
    assert check["status"] == "requested" and check["requested_by"].startswith("dispatcher-")
    ((topic, payload, retain),) = web.publisher.messages
    assert topic.endswith(f"{case.device_id}/command") and retain is False
    assert json.loads(payload)["correlation_id"] == check["id"]
    closed = ok(supervisor, case.id, "close", outcome="enforcement", closure_type="normal")
    assert closed["status"] == "closed" and closed["closed_at"] == "2026-11-27T02:10:00Z"
    assert (closed["outcome"], closed["closure_type"], closed["overdue"]) == ("enforcement", "normal", False)
    assert closed["allowed_actions"] == []
    assert [(t["action"], t["to_state"]) for t in closed["timeline"]] == [
        ("open_case", "awaiting_verification"),
        ("confirm", "filed"),
        ("dispatch", "dispatched"),
        ("start", "in_progress"),
        ("report_handled", "handled"),
        ("request_check", "checking"),
        ("close", "closed"),
    ]
    assert closed["timeline"][2]["details"] == {"department": DEPARTMENT}


def test_returns_and_suspension_keep_their_written_reasons(web: WebApp) -> None:
    case = seed_case(web)
    supervisor = api_client(web, "supervisor")
    ok(supervisor, case.id, "confirm")
    ok(supervisor, case.id, "dispatch", department=DEPARTMENT)
    returned = ok(supervisor, case.id, "return_for_rework", reason="not our department")
    assert returned["status"] == "filed" and returned["department"] is None
    suspended = ok(supervisor, case.id, "suspend", reason="road works")
    assert suspended["allowed_actions"] == ["resume"]
    assert ok(supervisor, case.id, "resume")["status"] == "filed"
    reasons = [(t["action"], t["reason"]) for t in suspended["timeline"] if t["reason"]]
    assert reasons == [("return_for_rework", "not our department"), ("suspend", "road works")]


@dataclass
class ManualCheckApp:
    """An app whose city does not re-check automatically, and whose broker may be down."""

    web: WebApp
    broker_down: bool = False
    sent: list[str] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if self.broker_down:
            raise DeviceLinkError("broker 127.0.0.1:1883 unreachable")
        self.sent.append(topic)

    def app(self) -> WebApp:
        config = self.web.context.config.model_copy(update={"recheck_on_handled": False})
        context = replace(self.web.context, config=config, publisher=self)
        return WebApp(context, self.web.publisher, self.web.session_factory)


def handled_case(app: WebApp) -> SeededCase:
    case = seed_case(app)
    dispatcher = api_client(app, "dispatcher")
    for action, extra in [("confirm", {}), ("dispatch", {"department": DEPARTMENT}), ("start", {})]:
        ok(dispatcher, case.id, action, **extra)
    assert ok(dispatcher, case.id, "report_handled")["status"] == "handled"
    return case


def test_an_operator_requests_the_check_by_hand(web: WebApp) -> None:
    manual = ManualCheckApp(web)
    app = manual.app()
    case = handled_case(app)
    assert manual.sent == []
    checking = ok(api_client(app, "operator"), case.id, "request_check")
    assert checking["status"] == "checking"
    assert [c["status"] for c in checking["checks"]] == ["requested"]
    assert manual.sent == [f"curbwatch/v1/{case.device_id}/command"]


def test_a_broker_failure_shows_on_the_check_and_the_case_stays_checking(web: WebApp) -> None:
    manual = ManualCheckApp(web, broker_down=True)
    app = manual.app()
    case = handled_case(app)
    checking = ok(api_client(app, "operator"), case.id, "request_check")
    assert checking["status"] == "checking"
    (check,) = checking["checks"]
    assert check["status"] == "failed" and "unreachable" in check["error"]
    assert audit_actions(web, case.id)[-2:] == ["request_check", "check_image"]
    with web.session_factory() as session:
        stored = session.get(CaseCheck, check["id"])
        assert stored is not None and stored.status == "failed"


@pytest.mark.parametrize(
    ("role", "steps", "action", "body", "status", "detail"),
    [
        ("operator", [], "confirm", {}, 200, None),
        ("operator", ["confirm"], "confirm", {}, 409, "cannot confirm a case that is filed"),
        ("admin", ["reject"], "confirm", {}, 409, "(terminal)"),
        ("operator", ["confirm"], "dispatch", {"department": DEPARTMENT}, 403, "needs role dispatcher"),
        ("dispatcher", ["confirm"], "suspend", {"reason": "x"}, 403, "needs role supervisor"),
        ("operator", [], "reject", {}, 422, "needs a reason among"),
        ("operator", [], "reject", {"reason": "ugly"}, 422, "needs a reason among"),
        ("dispatcher", ["confirm"], "dispatch", {}, 422, "needs a department"),
        ("dispatcher", ["confirm"], "dispatch", {"department": "   "}, 422, "needs a department"),
        ("dispatcher", ["confirm"], "dispatch", {"department": "the mayor"}, 422, "unknown department"),
        ("operator", [], "confirm", {"department": DEPARTMENT}, 422, "does not take a department"),
        ("supervisor", ["confirm"], "suspend", {"reason": "  "}, 422, "needs a written reason"),
        ("supervisor", ["confirm"], "suspend", {}, 422, "needs a written reason"),
        ("operator", [], "confirm", {"outcome": "service"}, 422, "does not take a outcome"),
        ("operator", [], "request_check", {}, 409, "cannot request_check a case that is awaiting"),
        ("operator", [], "fly", {}, 422, None),
        ("operator", [], "confirm", {"note": "extra field"}, 422, None),
        ("operator", [], "confirm", {"reason": "x" * 2001}, 422, None),
        ("operator", [], "confirm", {"reason": 5}, 422, None),
    ],
)
def test_refusals_map_to_status_codes_and_change_nothing(
    web: WebApp,
    role: str,
    steps: list[str],
    action: str,
    body: dict[str, Any],
    status: int,
    detail: str | None,
) -> None:
    case = seed_case(web)
    admin = api_client(web, "admin")
    for step in steps:
        ok(admin, case.id, step, **({"reason": "duplicate"} if step == "reject" else {}))
    before = audit_actions(web, case.id)
    response = act(api_client(web, role), case.id, action, **body)
    assert response.status_code == status, response.text
    if detail is not None:
        assert detail in response.json()["detail"]
    if status != 200:
        assert audit_actions(web, case.id) == before


def test_request_check_takes_no_details(web: WebApp) -> None:
    case = handled_case(ManualCheckApp(web).app())
    response = act(api_client(web, "operator"), case.id, "request_check", department=DEPARTMENT)
    assert response.status_code == 422 and "takes no department" in response.json()["detail"]


def test_missing_body_is_422(web: WebApp) -> None:
    case = seed_case(web)
    response = api_client(web, "operator").post(f"/api/v1/cases/{case.id}/actions")
    assert response.status_code == 422


def test_bearer_clients_act_without_a_csrf_token(web: WebApp) -> None:
    case = seed_case(web)
    username = web.user("operator")
    client = web.client()
    token = client.post(
        "/api/v1/auth/token", data={"username": username, "password": "correct horse battery"}
    )
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    response = client.post(f"/api/v1/cases/{case.id}/actions", json={"action": "confirm"}, headers=headers)
    assert response.status_code == 200
    assert response.json()["timeline"][-1]["actor"] == username


def test_script_in_case_text_comes_back_as_plain_json_data(web: WebApp) -> None:
    script = "<script>alert(1)</script>"
    case = seed_case(web, zone=script)
    client = api_client(web, "operator")
    ok(client, case.id, "reject", reason="duplicate")
    for response in (
        client.get(f"/api/v1/cases/{case.id}"),
        client.get("/api/v1/cases", params={"camera_id": case.camera_id}),
    ):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in response.headers["content-security-policy"]
    detail = client.get(f"/api/v1/cases/{case.id}").json()
    assert detail["zone"] == script  # data, verbatim: escaping is the renderer's job
    (item,) = listed(client, zone=script)
    assert item["id"] == case.id


def test_the_openapi_document_describes_the_cases_api(web: WebApp) -> None:
    spec = web.client().get("/openapi.json").json()
    for path in (
        "/api/v1/meta",
        "/api/v1/cases",
        "/api/v1/cases/{case_id}",
        "/api/v1/cases/{case_id}/actions",
    ):
        assert path in spec["paths"]
    actions = spec["paths"]["/api/v1/cases/{case_id}/actions"]["post"]
    assert {"403", "404", "409", "422"} <= set(actions["responses"])
    schemas = spec["components"]["schemas"]
    assert schemas["ActionIn"]["examples"][0] == {"action": "confirm"}
    assert schemas["CaseSummary"]["properties"]["overdue"]["description"]
    assert "/evidence/{sha256}" in spec["paths"]
