"""The KPI endpoint: roles, period parsing, and the figures of a hand-built period."""

from __future__ import annotations

from datetime import timedelta

from tests.server.test_kpis import CONFIRM, PARKING, make_case, reject, unique_day
from tests.server.web.conftest import WebApp


def test_kpis_of_a_period(web: WebApp) -> None:
    day = unique_day()
    camera = f"cam-kpi-{day:%Y%m%d}"
    for steps in ([CONFIRM], [CONFIRM], [reject("false_detection")], []):
        make_case(
            web.session_factory, camera=camera, kind=PARKING, created_at=day + timedelta(hours=1), steps=steps
        )
    client = web.signed_in("operator")
    since, until = day.isoformat(), (day + timedelta(days=1)).isoformat()
    response = client.get("/api/v1/kpis", params={"since": since, "until": until})
    assert response.status_code == 200, response.text
    kpis = response.json()
    assert (kpis["reported"], kpis["confirmed"], kpis["rejected"]) == (4, 2, 1)
    assert kpis["filing_rate"] == 2 / 3 and kpis["on_time_closure_rate"] is None
    assert kpis["by_camera"] == [
        {
            "key": camera,
            "reported": 4,
            "confirmed": 2,
            "rejected": 1,
            "precision": 2 / 3,
            "reject_reasons": {"false_detection": 1},
        }
    ]
    assert kpis["timezone"] == "Asia/Shanghai"
    assert [point["new_cases"] for point in kpis["daily"]] == [4, 0]  # 08:00 to 08:00 city time
    assert kpis["daily"][0]["day"] == day.date().isoformat()


def test_city_time_is_assumed_without_an_offset(web: WebApp) -> None:
    day = unique_day()
    make_case(
        web.session_factory,
        camera="cam-kpi-local",
        kind=PARKING,
        created_at=day + timedelta(hours=1),
        steps=[],
    )
    client = web.signed_in("operator")
    # 09:00 in Shanghai is 01:00 UTC: a city-time day starting at 10:00 misses the case
    late = client.get(
        "/api/v1/kpis", params={"since": f"{day:%Y-%m-%d}T10:00", "until": f"{day:%Y-%m-%d}T23:00"}
    )
    early = client.get(
        "/api/v1/kpis", params={"since": f"{day:%Y-%m-%d}T09:00", "until": f"{day:%Y-%m-%d}T23:00"}
    )
    assert (late.json()["reported"], early.json()["reported"]) == (0, 1)


def test_default_period_and_bad_periods(web: WebApp) -> None:
    client = web.signed_in("operator")
    default = client.get("/api/v1/kpis").json()
    assert len(default["daily"]) in (30, 31)
    reversed_ = client.get("/api/v1/kpis", params={"since": "2030-01-02", "until": "2030-01-01"})
    assert reversed_.status_code == 422 and "after since" in reversed_.json()["detail"]
    assert client.get("/api/v1/kpis", params={"since": "yesterday"}).status_code == 422
    assert web.client().get("/api/v1/kpis").status_code == 401
