"""Devices and cameras API; publishing zones as a signed desired config the edge accepts."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from curbwatch.edge.remote_config import RemoteConfig
from curbwatch.schema.protocol import Channel, topic, verify
from curbwatch.server.tables import AuditLog
from tests.edge.test_remote_config import FakeEdge
from tests.server.conftest import register
from tests.server.test_cameras import RefusingPublisher, camera_ids, send_heartbeat, store_event, zone_file
from tests.server.web.conftest import WebApp


def camera_with_history(web: WebApp) -> tuple[str, bytes, str, dict[str, str]]:
    """A device reporting one camera, with one event carrying images; (device, key, camera, images)."""
    device_id, key = register(web.session_factory)
    camera = camera_ids(count=1)[0]
    now = datetime.now(UTC)
    send_heartbeat(web.session_factory, device_id, [camera], at=now - timedelta(seconds=20))
    images = store_event(web.session_factory, device_id, camera, ts=now - timedelta(minutes=3))
    return device_id, key, camera, images


def test_devices_and_cameras_are_listed_for_operators(web: WebApp) -> None:
    device_id, _, camera, images = camera_with_history(web)
    client = web.signed_in("operator")
    devices = {item["device_id"]: item for item in client.get("/api/v1/devices").json()}
    assert devices[device_id]["health"] == "online" and devices[device_id]["camera_ids"] == [camera]
    listed = {item["camera_id"]: item for item in client.get("/api/v1/cameras").json()}
    detail = client.get(f"/api/v1/cameras/{camera}").json()
    for item in (listed[camera], detail):  # the clock moved between the two requests
        # Wall-clock age: bounded below the 180 s "stale" limit, however slow the machine.
        assert 20 <= item["device"].pop("heartbeat_age_s") < 170
    assert listed[camera] == detail
    assert detail["device"]["device_id"] == device_id and detail["metrics"]["fps"] == 5.0
    assert detail["snapshot"]["url"] == f"/evidence/{images['annotated']}"
    assert (detail["open_cases"], detail["zones"], detail["zones_version"]) == (0, None, None)


def test_unknown_camera_is_404(web: WebApp) -> None:
    client = web.signed_in("supervisor")
    assert client.get("/api/v1/cameras/cam-nowhere").status_code == 404
    response = client.put("/api/v1/cameras/cam-nowhere/zones", json=zone_file("cam-nowhere"))
    assert response.status_code == 404 and "cam-nowhere" in response.json()["detail"]
    assert client.get("/api/v1/cameras/bad%20id").status_code == 422


def test_supervisor_publishes_zones_the_edge_accepts(web: WebApp) -> None:
    device_id, key, camera, _ = camera_with_history(web)
    client = web.signed_in("supervisor")
    response = client.put(f"/api/v1/cameras/{camera}/zones", json=zone_file(camera, dwell=45))
    assert response.status_code == 200, response.text
    version = response.json()["version"]
    assert response.json() == {"device_id": device_id, "camera_id": camera, "version": version}
    name, payload, retain = web.publisher.messages[-1]
    assert (name, retain) == (topic(device_id, Channel.CONFIG_DESIRED), True)
    assert verify(json.loads(payload), key)
    edge = FakeEdge(camera_ids=(camera,))
    report = RemoteConfig(edge, device_id, key).apply(payload)
    assert (report.applied_version, report.error) == (version, None)
    assert edge.zones[camera].zones[0].min_dwell_s == 45
    detail = client.get(f"/api/v1/cameras/{camera}").json()
    assert detail["zones"] == zone_file(camera, dwell=45) and detail["zones_version"] == version
    assert detail["device"]["desired_version"] == version
    with web.session_factory() as session:
        entry = session.scalars(
            select(AuditLog).where(AuditLog.action == "publish_zones").order_by(AuditLog.id.desc())
        )
        latest = next(iter(entry))
    assert latest.details == {"device": device_id, "camera": camera, "version": version}
    assert latest.role == "supervisor" and latest.actor.startswith("supervisor-")


def test_a_bad_zone_file_is_422_with_the_location_of_each_problem(web: WebApp) -> None:
    _, _, camera, _ = camera_with_history(web)
    client = web.signed_in("admin")
    document = zone_file(camera)
    document["zones"][0]["polygon"] = [[0, 0], [5000, 0], [0, 10]]
    document["timezone"] = "Nowhere/City"
    response = client.put(f"/api/v1/cameras/{camera}/zones", json=document)
    assert response.status_code == 422
    lines = response.json()["detail"].splitlines()
    assert lines[0] == "zone file is invalid:"
    assert "- timezone: unknown time zone 'Nowhere/City'" in lines
    assert web.publisher.messages == []
    not_an_object = client.put(f"/api/v1/cameras/{camera}/zones", json=["not", "a", "zone", "file"])
    assert not_an_object.status_code == 422


def test_operators_and_dispatchers_may_not_publish(web: WebApp) -> None:
    _, _, camera, _ = camera_with_history(web)
    for role in ("operator", "dispatcher"):
        response = web.signed_in(role).put(f"/api/v1/cameras/{camera}/zones", json=zone_file(camera))
        assert response.status_code == 403
    anonymous = web.client().put(f"/api/v1/cameras/{camera}/zones", json=zone_file(camera))
    assert anonymous.status_code == 401
    assert web.publisher.messages == []


def test_publishing_needs_the_csrf_token(web: WebApp) -> None:
    _, _, camera, _ = camera_with_history(web)
    client = web.signed_in("supervisor")
    del client.headers["X-CSRF-Token"]
    assert client.put(f"/api/v1/cameras/{camera}/zones", json=zone_file(camera)).status_code == 403


def test_a_broker_refusal_is_502_and_the_config_stays(web: WebApp) -> None:
    _, _, camera, _ = camera_with_history(web)
    refusing = WebApp(
        dataclasses.replace(web.context, publisher=RefusingPublisher()), web.publisher, web.session_factory
    )
    client = refusing.signed_in("supervisor")
    response = client.put(f"/api/v1/cameras/{camera}/zones", json=zone_file(camera))
    assert response.status_code == 502
    assert "not delivered" in response.json()["detail"] and "unreachable" in response.json()["detail"]
    detail = client.get(f"/api/v1/cameras/{camera}").json()
    assert detail["zones_version"] is not None and detail["device"]["reported_version"] is None
