"""GeoReport v2 endpoints against the spec: shapes, filters, errors, access and signed media links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from curbwatch.server.cases.service import transition_case
from curbwatch.server.open311 import georeport
from curbwatch.server.tables import Case, CaseCheck
from tests.server.factories import jpeg_like
from tests.server.open311.cases import API_KEY, HAPPY_PATH, JURISDICTION, LOCATION, act, file_case
from tests.server.web.conftest import WebApp

BASE = "/open311/v2"
REQUEST_FIELDS = {
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "lat",
    "long",
    "media_url",
}
SHANGHAI = timedelta(hours=8)


def get(app: WebApp, path: str, **params: Any) -> Any:
    """GET with the GeoReport key; returns the response."""
    return app.client().get(f"{BASE}{path}", params={"api_key": API_KEY, **params})


def parse(value: str) -> datetime:
    """An ISO 8601 time that must carry an offset."""
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, value
    return parsed


def assert_error(response: Any, code: int, words: str) -> None:
    """The GeoReport error format: a list of {code, description}."""
    assert response.status_code == code, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["code"] == code
    assert words in body[0]["description"]


def test_services_are_the_configured_event_codes_grouped_by_rule(app: WebApp) -> None:
    response = get(app, "/services.json")
    assert response.status_code == 200
    services = {s["service_code"]: s for s in response.json()}
    names = app.context.config.code_names()
    assert set(services) == set(names)
    for code, service in services.items():
        assert set(service) == {
            "service_code",
            "service_name",
            "description",
            "metadata",
            "type",
            "keywords",
            "group",
        }
        assert service["service_name"] == names[code]
        assert (service["metadata"], service["type"]) == (False, "realtime")
    assert services["0505"]["group"] == services["0506"]["group"] == "illegal_parking"
    assert services["0501"]["group"] == "unlicensed_vending"
    assert "parking" in services["0506"]["keywords"]


def test_service_definition_and_unknown_service(app: WebApp) -> None:
    assert get(app, "/services/0505.json").json() == {"service_code": "0505", "attributes": []}
    assert_error(get(app, "/services/9999.json"), 404, "9999")


def test_a_filed_case_is_a_request_with_every_spec_field(app: WebApp, epoch: datetime) -> None:
    case = file_case(app, epoch)
    body = get(app, f"/requests/{case.id}.json").json()
    assert isinstance(body, list) and len(body) == 1
    request = body[0]
    assert set(request) == REQUEST_FIELDS
    with app.session_factory() as session:
        stored = session.get(Case, case.id)
        assert stored is not None and stored.deadline is not None
    assert request["service_request_id"] == case.id
    assert (request["status"], request["status_notes"]) == ("open", "filed")
    assert request["service_code"] == "0505"
    assert request["service_name"] == app.context.config.code_names()["0505"]
    requested = parse(request["requested_datetime"])
    assert requested == epoch and requested.utcoffset() == SHANGHAI
    assert parse(request["updated_datetime"]) == epoch
    assert parse(request["expected_datetime"]) == stored.deadline.replace(tzinfo=UTC)
    assert (request["lat"], request["long"]) == LOCATION
    assert case.camera_id in request["address"] and case.camera_id in request["description"]
    assert request["agency_responsible"] is None


def test_dispatched_and_closed_cases_carry_department_and_status(app: WebApp, epoch: datetime) -> None:
    dispatched = file_case(app, epoch, steps=2)
    closed = file_case(app, epoch, steps=len(HAPPY_PATH))
    ids = f"{dispatched.id},{closed.id}"
    body = {r["service_request_id"]: r for r in get(app, "/requests.json", service_request_id=ids).json()}
    assert body[dispatched.id]["status"] == "open"
    assert body[dispatched.id]["agency_responsible"] == "环卫 sanitation"
    assert "sanitation" in body[dispatched.id]["status_notes"]
    assert body[closed.id]["status"] == "closed"
    assert body[closed.id]["status_notes"] == "closed (service, normal)"


def test_unfiled_and_void_cases_are_never_published(app: WebApp, epoch: datetime) -> None:
    waiting = file_case(app, epoch, steps=0)
    void = file_case(app, epoch, steps=0)
    with app.session_factory() as session, session.begin():
        transition_case(
            session,
            config=app.context.config,
            case_id=void.id,
            action="reject",
            actor="op",
            role="operator",
            reason="false_detection",
            at=epoch,
        )
    filed = file_case(app, epoch)
    listed = get(app, "/requests.json", service_request_id=f"{waiting.id},{void.id},{filed.id}").json()
    assert [r["service_request_id"] for r in listed] == [filed.id]
    dated = get(app, "/requests.json", start_date=epoch.isoformat(), end_date=epoch.isoformat()).json()
    assert [r["service_request_id"] for r in dated] == [filed.id]
    for hidden in (waiting, void):
        assert_error(get(app, f"/requests/{hidden.id}.json"), 404, hidden.id)


def test_date_status_and_code_filters(app: WebApp, epoch: datetime) -> None:
    old = file_case(app, epoch - timedelta(days=100))
    recent = file_case(app, epoch - timedelta(days=10))
    closed = file_case(app, epoch - timedelta(days=5), steps=len(HAPPY_PATH))
    vending = file_case(app, epoch - timedelta(days=1), event_code="0501")

    def ids(**params: Any) -> list[str]:
        response = get(app, "/requests.json", **params)
        assert response.status_code == 200, response.text
        return [r["service_request_id"] for r in response.json()]

    # No dates: the 90 days before now, newest filing first.
    assert ids() == [vending.id, closed.id, recent.id]
    assert ids(status="open") == [vending.id, recent.id]
    assert ids(status="closed") == [closed.id]
    assert ids(status="open,closed", service_code="0501") == [vending.id]
    start = (epoch - timedelta(days=101)).isoformat()
    assert ids(start_date=start, end_date=(epoch - timedelta(days=20)).isoformat()) == [old.id]
    # A start alone covers the 90 days after it, an end alone the 90 days before it, both inclusive.
    assert ids(start_date=(epoch - timedelta(days=100)).isoformat()) == [recent.id, old.id]
    assert ids(end_date=(epoch - timedelta(days=4)).isoformat()) == [closed.id, recent.id]
    # Naive times are the city's (UTC+8): 10:00 local is 02:00 UTC.
    day = (epoch - timedelta(days=10)).replace(tzinfo=None) + SHANGHAI
    assert ids(start_date=day.isoformat(), end_date=day.isoformat()) == [recent.id]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"start_date": "2040-03-01T00:00:00Z", "end_date": "2040-01-01T00:00:00Z"}, "before start_date"),
        ({"start_date": "2040-01-01T00:00:00Z", "end_date": "2040-04-01T00:00:00Z"}, "90 days"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"status": "pending"}, "open or closed"),
    ],
)
def test_bad_queries_get_georeport_errors(app: WebApp, params: dict[str, str], words: str) -> None:
    assert_error(get(app, "/requests.json", **params), 400, words)


def test_at_most_the_result_cap(app: WebApp, epoch: datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [file_case(app, epoch - timedelta(hours=n)) for n in range(3)]
    monkeypatch.setattr(georeport, "MAX_RESULTS", 2)
    listed = get(app, "/requests.json").json()
    assert [r["service_request_id"] for r in listed] == [cases[0].id, cases[1].id]


def _media_path(url: str) -> str:
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:8000"  # settings.public_url
    return f"{parts.path}?{parts.query}"


def test_media_url_is_a_signed_link_to_the_annotated_image(app: WebApp, epoch: datetime) -> None:
    case = file_case(app, epoch)
    media_url = get(app, f"/requests/{case.id}.json").json()[0]["media_url"]
    assert case.annotated in media_url and "token=" in media_url
    anonymous = app.client()
    image = anonymous.get(_media_path(media_url))
    assert image.status_code == 200
    assert image.content == app.context.evidence.read(case.annotated)
    # The token is bound to its image and to our key.
    forged_for_clean = _media_path(media_url).replace(case.annotated, case.clean)
    assert anonymous.get(forged_for_clean).status_code == 403
    path, token = _media_path(media_url).split("?token=")
    assert anonymous.get(f"{path}?token={token[:-4]}AAAA").status_code == 403
    assert anonymous.get(path).status_code != 200


def test_api_key_or_sign_in_is_required(app: WebApp) -> None:
    anonymous = app.client()
    assert_error(anonymous.get(f"{BASE}/services.json"), 401, "api_key")
    assert_error(anonymous.get(f"{BASE}/requests.json", params={"api_key": "guess"}), 403, "api_key")
    assert_error(anonymous.get(f"{BASE}/requests.json", params={"api_key": API_KEY[:-1]}), 403, "api_key")
    assert anonymous.get(f"{BASE}/services.json", params={"api_key": API_KEY}).status_code == 200
    operator: TestClient = app.signed_in("operator")
    assert operator.get(f"{BASE}/services.json").status_code == 200


def test_no_keys_configured_means_sign_in_only(web: WebApp) -> None:
    response = web.client().get(f"{BASE}/services.json", params={"api_key": ""})
    assert_error(response, 403, "api_key")


def test_other_jurisdictions_are_not_served(app: WebApp) -> None:
    assert get(app, "/services.json", jurisdiction_id=JURISDICTION).status_code == 200
    assert_error(get(app, "/services.json", jurisdiction_id="other.city"), 404, "other.city")


def _add_check_image(app: WebApp, case_id: str, device_id: str, camera_id: str, at: datetime) -> str:
    sha, data = jpeg_like(512, seed=hash(case_id) % 10_000)
    app.context.evidence.put(sha, data)
    with app.session_factory() as session, session.begin():
        session.add(
            CaseCheck(
                id=case_id[:16] + "c" * 16,
                case_id=case_id,
                device_id=device_id,
                camera_id=camera_id,
                requested_at=at,
                requested_by="operator",
                status="received",
                evidence_sha256=sha,
                answered_at=at,
            )
        )
    return sha


def test_updates_list_each_transition_of_filed_cases(app: WebApp, epoch: datetime) -> None:
    case = file_case(app, epoch, steps=4)
    check_sha = _add_check_image(app, case.id, case.device_id, case.camera_id, epoch + timedelta(minutes=4))
    act(app, case.id, HAPPY_PATH[4:], epoch + timedelta(minutes=5))
    file_case(app, epoch, steps=0)  # awaiting verification: no updates
    response = get(app, "/requests/updates.json", start_date=epoch.isoformat())
    assert response.status_code == 200, response.text
    updates = response.json()
    assert {u["service_request_id"] for u in updates} == {case.id}
    assert len(updates) == len(HAPPY_PATH)
    assert len({u["update_id"] for u in updates}) == len(updates)
    for update in updates:
        assert set(update) == {
            "update_id",
            "service_request_id",
            "status",
            "updated_datetime",
            "description",
            "media_url",
        }
    times = [parse(u["updated_datetime"]) for u in updates]
    assert times == sorted(times) and times[0] == epoch
    assert [u["status"] for u in updates] == ["open"] * 5 + ["closed"]
    assert updates[0]["description"] == "confirm: now filed"
    assert "sanitation" in updates[1]["description"]
    # The check image shows the street after handling; it is linked from then on.
    assert [u["media_url"] is not None for u in updates] == [False] * 4 + [True, True]
    assert check_sha in updates[-1]["media_url"]
    outside = get(app, "/requests/updates.json", end_date=(epoch - timedelta(seconds=1)).isoformat())
    assert case.id not in {u["service_request_id"] for u in outside.json()}
