"""The review pages: sign-in required, one render per role, CSP, escaping, the queue flow."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime

import pytest

from curbwatch.server.cases.service import transition_case
from curbwatch.server.cases.workflow import Action, Role
from curbwatch.server.web.app import CONTENT_SECURITY_POLICY
from curbwatch.server.web.ui.pages import ACTION_VIEWS, REJECT_LABELS
from tests.server.web.case_factory import seed_case
from tests.server.web.conftest import WebApp

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
ROLES = [role.value for role in Role]


def action_keys(page: str) -> dict[str, str]:
    """The action buttons of a case page: action -> key."""
    return dict(re.findall(r'data-action="(\w+)" data-key="(\w)"', page))


@pytest.mark.parametrize(
    ("path", "login"),
    [
        ("/queue?camera=a", "/login?next=/queue%3Fcamera%3Da"),
        ("/queue", "/login?next=/queue"),
        ("/cases?status=filed", "/login?next=/cases%3Fstatus%3Dfiled"),
        ("/cases/0123abcd", "/login?next=/cases/0123abcd"),
    ],
)
def test_pages_send_the_signed_out_to_the_login_form(web: WebApp, path: str, login: str) -> None:
    response = web.client().get(path)

    assert (response.status_code, response.headers["location"]) == (303, login)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_gets_each_page_with_the_csp(web: WebApp, role: str) -> None:
    case = seed_case(web)
    client = web.signed_in(role, display_name=f"Reviewer {role}")

    for path in ("/queue", "/cases", f"/cases/{case.id}"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["content-type"].startswith("text/html")
        assert f"Reviewer {role}" in response.text
        assert "<script>" not in response.text and " on" + "click=" not in response.text  # CSP-clean
        assert ' style="' not in response.text


@pytest.mark.parametrize(
    ("role", "keys"),
    [
        ("operator", {"confirm": "c", "reject": "r"}),
        ("dispatcher", {"confirm": "c", "reject": "r"}),
        ("supervisor", {"confirm": "c", "reject": "r", "suspend": "p"}),
        ("admin", {"confirm": "c", "reject": "r", "suspend": "p"}),
    ],
)
def test_case_page_offers_the_role_its_actions_one_key_each(web: WebApp, role: str, keys: dict) -> None:
    case = seed_case(web)

    page = web.signed_in(role).get(f"/cases/{case.id}").text

    assert action_keys(page) == keys
    assert ('id="dialog-reject"' in page, 'id="dialog-suspend"' in page) == (True, "suspend" in keys)
    assert 'id="dialog-dispatch"' not in page  # only offered where dispatch is allowed
    for n, label in enumerate(REJECT_LABELS.values(), start=1):
        assert f"<kbd>{n}</kbd> {html.escape(label)}" in page


@pytest.mark.parametrize(
    ("role", "keys"),
    [("operator", {}), ("dispatcher", {"dispatch": "d"}), ("supervisor", {"dispatch": "d", "suspend": "p"})],
)
def test_filed_case_offers_dispatch_to_a_configured_department(web: WebApp, role: str, keys: dict) -> None:
    case = seed_case(web)
    with web.session_factory() as session, session.begin():
        transition_case(
            session,
            case_id=case.id,
            action=Action.CONFIRM,
            actor="op-x",
            role=Role.OPERATOR,
            config=web.context.config,
            at=datetime.now(UTC),
        )

    page = web.signed_in(role).get(f"/cases/{case.id}").text

    assert action_keys(page) == keys
    assert ('id="dialog-dispatch"' in page) == ("dispatch" in keys)
    for department in web.context.config.departments if keys else ():
        assert f'<option value="{department}">{department}</option>' in page
    assert "Confirmed → filed" in page


def test_case_page_shows_evidence_facts_and_the_timeline(web: WebApp) -> None:
    case = seed_case(web, zone="far-kerb", location=(31.2304, 121.4737))

    page = web.signed_in("operator").get(f"/cases/{case.id}").text

    assert f'id="evidence-main" src="/evidence/{case.annotated}"' in page
    assert f'src="/evidence/{case.crop}"' in page
    assert f"/evidence/{case.clean}" not in page  # the unblurred original is for supervisors
    assert "31.23040, 121.47370" in page and "far-kerb" in page
    assert "Reported by the camera" in page and "awaiting verification" in page


def test_a_decided_case_shows_its_reason_and_offers_nothing_to_an_operator(web: WebApp) -> None:
    case = seed_case(web)
    with web.session_factory() as session, session.begin():
        transition_case(
            session,
            case_id=case.id,
            action=Action.REJECT,
            actor="op-x",
            role=Role.OPERATOR,
            reason="duplicate",
            config=web.context.config,
            at=datetime.now(UTC),
        )

    page = web.signed_in("operator").get(f"/cases/{case.id}").text

    assert action_keys(page) == {}
    assert "No action is open to you on a void case." in page
    assert REJECT_LABELS["duplicate"] in page and "op-x (operator)" in page


def test_untrusted_text_renders_escaped(web: WebApp) -> None:
    case = seed_case(web, zone=SCRIPT, camera_id="cam-" + SCRIPT[:40])
    supervisor = web.signed_in("supervisor")
    suspended = supervisor.post(
        f"/api/v1/cases/{case.id}/actions", json={"action": "suspend", "reason": SCRIPT}
    )
    assert suspended.status_code == 200, suspended.text

    pages = [
        supervisor.get(f"/cases/{case.id}").text,
        supervisor.get("/queue", params={"zone": SCRIPT, "camera": SCRIPT}).text,
        supervisor.get("/cases", params={"zone": SCRIPT}).text,
    ]
    missing = supervisor.get("/cases/<script>alert(1)").text  # a path segment cannot hold the "/"

    for page in pages:
        assert ESCAPED in page
        assert SCRIPT not in page
    assert pages[0].count(ESCAPED) >= 3  # zone in the facts, the image's alt text, the suspend reason
    assert "“&lt;script&gt;alert(1)”" in missing and "<script>alert" not in missing


def test_unknown_case_is_a_404_page(web: WebApp) -> None:
    response = web.signed_in("operator").get("/cases/" + "0" * 32)

    assert response.status_code == 404
    assert f"There is no case “{'0' * 32}”." in response.text


@pytest.mark.parametrize(
    "path", ["/queue?rule=speeding", "/cases?status=open", "/queue?camera=" + "x" * 65, "/cases/" + "y" * 65]
)
def test_bad_page_filters_are_refused(web: WebApp, path: str) -> None:
    response = web.signed_in("operator").get(path)

    assert response.status_code == 422
    assert response.json()["detail"]


def test_blank_filters_mean_any(web: WebApp) -> None:
    client = web.signed_in("operator")

    for path in ("/queue?camera=&rule=&zone=", "/cases?status=&camera=&rule=&zone="):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert all(f'data-{name}=""' in response.text for name in ("camera", "rule", "zone"))


def test_case_opened_from_the_queue_goes_back_and_on_with_its_filters(web: WebApp) -> None:
    case = seed_case(web)
    client = web.signed_in("operator")

    from_queue = client.get(f"/cases/{case.id}", params={"queue": 1, "camera": case.camera_id}).text
    on_its_own = client.get(f"/cases/{case.id}").text

    assert f'href="/queue?camera={case.camera_id}"' in from_queue
    assert f"status=awaiting_verification&amp;camera_id={case.camera_id}&amp;limit=2" in from_queue
    assert 'data-next-query=""' in on_its_own and 'href="/cases"' in on_its_own


def test_queue_page_starts_polling_from_the_server_clock(web: WebApp) -> None:
    page = web.signed_in("operator").get("/queue", params={"rule": "illegal_parking"}).text

    since = re.search(r'data-since="([^"]+)"', page)
    assert since and datetime.fromisoformat(since.group(1)).tzinfo is not None
    assert '<option value="illegal_parking" selected>' in page
    assert 'src="/static/queue.js"' in page


def test_action_keys_are_unique_and_single() -> None:
    keys = [view.key for view in ACTION_VIEWS]

    assert len(set(keys)) == len(keys) == len(Action)
    assert all(len(key) == 1 and key not in "jkq" for key in keys)
