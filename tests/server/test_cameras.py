"""Cameras from heartbeats and events, their snapshots and case counts; publishing zones to the edge."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.remote_config import RemoteConfig
from curbwatch.schema.events import EventV1
from curbwatch.schema.protocol import Channel, HeartbeatV1, StatusV1, topic, verify
from curbwatch.server.cameras import (
    UnknownCamera,
    ZoneFileInvalid,
    ZonesNotDelivered,
    get_camera,
    list_cameras,
    publish_zones,
)
from curbwatch.server.cases.folding import FoldingConfig, fold_event
from curbwatch.server.cases.service import transition_case
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.device_link import DeviceLinkError
from curbwatch.server.devices import record_heartbeat, record_status
from curbwatch.server.event_writer import Decision, Verdict, write_events
from curbwatch.server.tables import AuditLog, DeviceConfig
from tests.edge.test_remote_config import FakeEdge
from tests.server.conftest import register
from tests.server.factories import event_document
from tests.server.web.conftest import RecordingPublisher

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
_SEQ = itertools.count(1)


def evidence_ref(role: str) -> dict[str, Any]:
    sha256 = uuid.uuid4().hex * 2
    return {
        "role": role,
        "sha256": sha256,
        "size_bytes": 1000,
        "width": 1280,
        "height": 720,
        "path": f"ev/{sha256}.jpg",
        "restricted": role == "clean",
    }


def store_event(
    factory: sessionmaker[Session],
    device_id: str,
    camera: str,
    *,
    ts: datetime,
    roles: tuple[str, ...] = ("clean", "annotated", "crop"),
    type_: str = "start",
    evidence: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """An event row as the ingest stores it (made-up images of ``roles`` unless ``evidence`` is
    given); returns the sha256 of each evidence role."""
    evidence = evidence if evidence is not None else [evidence_ref(role) for role in roles]
    document = event_document(device_id, camera_id=camera, ts=ts.isoformat(), type=type_, evidence=evidence)
    event = EventV1.model_validate(document)
    row = {
        "event_id": event.event_id,
        "device_id": device_id,
        "seq": next(_SEQ),
        "episode_id": event.episode_id,
        "type": type_,
        "rule": event.rule.value,
        "violation": event.violation.value,
        "event_code": event.event_code,
        "camera": camera,
        "zone": event.zone,
        "ts": ts,
        "received_at": ts,
        "document": document,
    }
    with factory() as session, session.begin():
        assert write_events(session, [row]) == [Decision(Verdict.STORED)]
    return {item["role"]: item["sha256"] for item in evidence}


def send_heartbeat(
    factory: sessionmaker[Session],
    device_id: str,
    cameras: list[str],
    *,
    at: datetime,
    status: str | None = "online",
) -> None:
    """The device's retained status and a heartbeat naming ``cameras``, received at ``at``."""
    heartbeat = HeartbeatV1(
        device_id=device_id,
        ts=at,
        cameras=[
            {
                "camera_id": camera,
                "state": "running",
                "fps": 5.0,
                "inferred_share": 0.25,
                "inference_ms": 21.5,
            }
            for camera in cameras
        ],
        outbox_depth=3,
        outbox_bytes=1000,
        disk_free_bytes=10**9,
        model_version="yolox-nano@1",
    )
    with factory() as session, session.begin():
        if status is not None:
            record_status(session, StatusV1(device_id=device_id, state=status, ts=at), received_at=at)
        record_heartbeat(session, heartbeat, received_at=at)


def camera_ids(prefix: str = "cam", count: int = 2) -> list[str]:
    return [f"{prefix}-{uuid.uuid4().hex[:10]}" for _ in range(count)]


def zone_file(camera: str, *, dwell: float = 60.0, name: str = "kerb") -> dict[str, Any]:
    return {
        "version": 1,
        "camera": camera,
        "frame_wh": [1280, 720],
        "timezone": "Asia/Shanghai",
        "zones": [
            {
                "name": name,
                "kind": "no_parking",
                "polygon": [[100, 400], [900, 420], [900, 600], [100, 580]],
                "min_dwell_s": dwell,
                "vehicle_classes": ["car", "truck"],
            }
        ],
    }


def test_a_camera_in_a_heartbeat_shows_its_metrics_and_device(session_factory: sessionmaker[Session]) -> None:
    device_id, _ = register(session_factory)
    camera = camera_ids(count=1)[0]
    send_heartbeat(session_factory, device_id, [camera], at=NOW - timedelta(seconds=30))
    with session_factory() as session:
        view = get_camera(session, camera, now=NOW)
    assert view.device.device_id == device_id and view.device.camera_ids == (camera,)
    assert (view.device.health, view.device.heartbeat_age_s, view.device.outbox_depth) == ("online", 30.0, 3)
    assert view.metrics is not None and (view.metrics.fps, view.metrics.inference_ms) == (5.0, 21.5)
    assert (view.snapshot, view.last_event_at, view.open_cases, view.zones) == (None, None, 0, None)


@pytest.mark.parametrize(
    ("status", "age_s", "health"),
    [("online", 30, "online"), ("online", 600, "stale"), ("offline", 30, "offline"), (None, 30, "unknown")],
)
def test_device_health_from_status_and_heartbeat_age(
    session_factory: sessionmaker[Session], status: str | None, age_s: int, health: str
) -> None:
    device_id, _ = register(session_factory)
    camera = camera_ids(count=1)[0]
    send_heartbeat(session_factory, device_id, [camera], at=NOW - timedelta(seconds=age_s), status=status)
    with session_factory() as session:
        assert get_camera(session, camera, now=NOW).device.health == health


def test_snapshot_is_the_newest_event_image_annotated_first(session_factory: sessionmaker[Session]) -> None:
    device_id, _ = register(session_factory)
    camera, clean_only = camera_ids()
    store_event(session_factory, device_id, camera, ts=NOW - timedelta(hours=2))
    newer = store_event(session_factory, device_id, camera, ts=NOW - timedelta(hours=1))
    # an end event sent at shutdown carries no image
    store_event(session_factory, device_id, camera, ts=NOW - timedelta(minutes=5), roles=(), type_="end")
    only = store_event(session_factory, device_id, clean_only, ts=NOW, roles=("clean", "crop"))
    with session_factory() as session:
        views = {view.camera_id: view for view in list_cameras(session, now=NOW)}
        restricted = get_camera(session, clean_only, now=NOW, restricted=True)
    view = views[camera]
    assert view.snapshot is not None
    assert (view.snapshot.sha256, view.snapshot.role) == (newer["annotated"], "annotated")
    assert (view.snapshot.width, view.snapshot.height) == (1280, 720)
    assert view.last_event_at == NOW - timedelta(minutes=5)
    assert view.device.device_id == device_id and view.metrics is None
    # a clean original is restricted: only those who may see it get it as the snapshot
    assert views[clean_only].snapshot is None
    snapshot = restricted.snapshot
    assert snapshot is not None and (snapshot.sha256, snapshot.role) == (only["clean"], "clean")


def test_case_counts_per_camera(session_factory: sessionmaker[Session]) -> None:
    device_id, _ = register(session_factory)
    camera = camera_ids(count=1)[0]
    store_event(session_factory, device_id, camera, ts=NOW)
    case_ids = []
    for _ in range(3):
        event = EventV1.model_validate(event_document(device_id, camera_id=camera, zone=uuid.uuid4().hex[:8]))
        with session_factory() as session, session.begin():
            case_ids.append(fold_event(session, event, config=FoldingConfig(), at=NOW).id)
    for case_id, action, reason in ((case_ids[0], "confirm", None), (case_ids[1], "reject", "duplicate")):
        with session_factory() as session, session.begin():
            transition_case(
                session,
                case_id=case_id,
                action=action,
                actor="op",
                role="operator",
                reason=reason,
                config=CaseServerConfig(),
                at=NOW,
            )
    with session_factory() as session:
        view = get_camera(session, camera, now=NOW)
    assert (view.open_cases, view.awaiting_verification) == (2, 1)


def test_an_unknown_camera_is_refused(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, pytest.raises(UnknownCamera):
        get_camera(session, "cam-never-seen", now=NOW)
    with session_factory() as session, pytest.raises(UnknownCamera):
        publish_zones(
            session,
            camera_id="cam-never-seen",
            zone_document=zone_file("cam-never-seen"),
            actor="sup",
            role="supervisor",
            at=NOW,
            publisher=RecordingPublisher(),
        )


def publish(
    factory: sessionmaker[Session], publisher: Any, camera: str, document: dict[str, Any], at: datetime
):
    with factory() as session:
        return publish_zones(
            session,
            camera_id=camera,
            zone_document=document,
            actor="sup",
            role="supervisor",
            at=at,
            publisher=publisher,
        )


def test_publishing_keeps_the_other_cameras_zones_and_the_thresholds(
    session_factory: sessionmaker[Session],
) -> None:
    device_id, key = register(session_factory)
    cam_1, cam_2 = camera_ids()
    send_heartbeat(session_factory, device_id, [cam_1, cam_2], at=NOW)
    thresholds = {"score_threshold": 0.4, "class_thresholds": {"car": 0.5}}
    with session_factory() as session, session.begin():
        session.add(
            DeviceConfig(
                device_id=device_id,
                version="initial",
                document={
                    "schema": "curbwatch.config.v1",
                    "version": "initial",
                    "zones": {},
                    "detector": thresholds,
                },
                published_at=NOW - timedelta(days=1),
                published_by="admin",
            )
        )
    publisher = RecordingPublisher()
    first = publish(session_factory, publisher, cam_1, zone_file(cam_1), NOW)
    second = publish(session_factory, publisher, cam_2, zone_file(cam_2, dwell=90), NOW)
    # the same zones again still make a new version, or the edge would ignore them
    third = publish(session_factory, publisher, cam_2, zone_file(cam_2, dwell=90), NOW)
    assert len({first.version, second.version, third.version}) == 3
    assert [(name, retain) for name, _, retain in publisher.messages] == [
        (topic(device_id, Channel.CONFIG_DESIRED), True)
    ] * 3
    document = json.loads(publisher.messages[1][1])
    assert verify(document, key) and document["version"] == second.version
    assert document["zones"] == {cam_1: zone_file(cam_1), cam_2: zone_file(cam_2, dwell=90)}
    assert document["detector"] == thresholds
    edge = FakeEdge(camera_ids=(cam_1, cam_2))
    report = RemoteConfig(edge, device_id, key, clock=lambda: NOW).apply(publisher.messages[1][1])
    assert (report.applied_version, report.error) == (second.version, None)
    assert edge.zones[cam_2].zones[0].min_dwell_s == 90 and edge.thresholds == [(0.4, {"car": 0.5})]
    with session_factory() as session:
        view = get_camera(session, cam_1, now=NOW)
        assert view.zones == zone_file(cam_1) and view.zones_version == third.version
        assert view.device.desired_version == third.version
        entries = session.scalars(
            select(AuditLog).where(AuditLog.action == "publish_zones").order_by(AuditLog.id.desc()).limit(3)
        ).all()
    assert [entry.details for entry in reversed(entries)] == [
        {"device": device_id, "camera": camera, "version": published.version}
        for camera, published in ((cam_1, first), (cam_2, second), (cam_2, third))
    ]
    assert {(entry.actor, entry.role) for entry in entries} == {("sup", "supervisor")}


def with_zone(camera: str, **changes: Any) -> dict[str, Any]:
    document = zone_file(camera)
    document["zones"][0].update(changes)
    return document


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda cam: with_zone(cam, polygon=[[0, 0], [10, 10], [0, 10], [10, 0]]),
            "zones.0.no_parking.polygon: ",
        ),
        (
            lambda cam: with_zone(cam, polygon=[[0, 0], [2000, 0], [0, 100]]),
            "zones.0.polygon: zone kerb: polygon",
        ),
        (lambda cam: with_zone(cam, kind="no_flying"), "zones.0: Input tag 'no_flying'"),
        (
            lambda cam: with_zone(cam, min_dwell_s=-1),
            "zones.0.no_parking.min_dwell_s: Input should be greater",
        ),
        (
            lambda cam: {**zone_file(cam), "timezone": "Mars/Olympus"},
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
        (lambda cam: {**zone_file(cam), "camera": "other-cam"}, "camera: the file is for camera 'other-cam'"),
        (lambda cam: {"version": 1}, "camera: Field required"),
    ],
)
def test_an_invalid_zone_file_lists_each_problem_and_stores_nothing(
    session_factory: sessionmaker[Session], change: Any, expected: str
) -> None:
    device_id, _ = register(session_factory)
    camera = camera_ids(count=1)[0]
    send_heartbeat(session_factory, device_id, [camera], at=NOW)
    publisher = RecordingPublisher()
    with pytest.raises(ZoneFileInvalid) as caught:
        publish(session_factory, publisher, camera, change(camera), NOW)
    assert any(line.startswith(expected) for line in caught.value.errors), caught.value.errors
    assert str(caught.value).startswith("zone file is invalid:\n- ")
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(DeviceConfig.device_id == device_id)) == 0
    assert publisher.messages == []


class RefusingPublisher:
    def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        raise DeviceLinkError("broker 127.0.0.1:1883 unreachable: connection refused")


def test_a_refused_publication_keeps_the_stored_config(session_factory: sessionmaker[Session]) -> None:
    device_id, _ = register(session_factory)
    camera = camera_ids(count=1)[0]
    send_heartbeat(session_factory, device_id, [camera], at=NOW)
    with pytest.raises(
        ZonesNotDelivered, match=r"not delivered to the device: broker .* unreachable"
    ) as caught:
        publish(session_factory, RefusingPublisher(), camera, zone_file(camera), NOW)
    with session_factory() as session:
        view = get_camera(session, camera, now=NOW)
    assert view.zones_version == caught.value.version and view.zones == zone_file(camera)
