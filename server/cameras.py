"""Cameras the server knows: health, latest snapshot, open cases, zones; and publishing new zones.

A camera is known from its device's heartbeat (``HeartbeatV1.cameras``) or from the events stored for
it. Camera ids name zone files, so they are unique across a deployment; should two devices ever name
the same camera, the one that reported it most recently wins.

Zones come from the server's own history: the newest ``device_configs`` row of the camera's device.
:func:`publish_zones` adds a row with the new zones of one camera (the device's other cameras keep
theirs), signs it with the device key as a ``DesiredConfigV1``, commits, and only then hands it to the
broker, retained, so a device that is offline now applies it when it reconnects. The device answers on
``config/reported``; the ingest keeps that in ``devices.reported_config_*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from curbwatch.schema.events import EvidenceRole
from curbwatch.schema.protocol import Channel, DesiredConfigV1, HeartbeatV1, canonical_bytes, sign, topic
from curbwatch.schema.zones import ZoneFile
from curbwatch.server.audit import append_audit
from curbwatch.server.cases.workflow import TERMINAL_STATES, CaseStatus
from curbwatch.server.db import as_utc
from curbwatch.server.device_link import DeviceLinkError, DevicePublisher
from curbwatch.server.devices import device_key
from curbwatch.server.tables import CameraSighting, Case, Device, DeviceConfig, Event

logger = logging.getLogger(__name__)

PUBLISH_ACTION = "publish_zones"
# The edge sends a heartbeat a minute by default; three missed ones make a device stale.
STALE_AFTER_S = 180.0
# Newest events searched for an image: end events sent at shutdown carry none.
SNAPSHOT_LOOKBACK = 10
SNAPSHOT_ROLES = (EvidenceRole.ANNOTATED.value, EvidenceRole.CLEAN.value)


class CameraError(Exception):
    """A camera operation failed."""


class UnknownCamera(CameraError):
    """No heartbeat or event names this camera."""


class ZoneFileInvalid(CameraError):
    """A zone document failed validation; ``errors`` holds one ``location: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("zone file is invalid:\n" + "\n".join(f"- {line}" for line in errors))
        self.errors = errors


class ZonesNotDelivered(CameraError):
    """The configuration was stored but the broker did not take it."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"zones saved as version {version} but not delivered to the device: {reason}")
        self.version = version


@dataclass(frozen=True)
class CameraMetrics:
    """One camera's figures from its device's latest heartbeat."""

    state: str
    fps: float
    inferred_share: float
    inference_ms: float


@dataclass(frozen=True)
class Snapshot:
    """The newest full-frame image of a camera: evidence of its newest event that has one."""

    sha256: str
    role: str
    width: int
    height: int
    event_id: str
    ts: datetime


@dataclass(frozen=True)
class DeviceHealth:
    """A device's reported state, heartbeat and configuration versions."""

    device_id: str
    health: str  # online, stale, offline or unknown
    status: str | None
    status_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    camera_ids: tuple[str, ...]
    outbox_depth: int | None
    model_version: str | None
    desired_version: str | None
    desired_at: datetime | None
    reported_version: str | None
    reported_error: str | None
    reported_at: datetime | None


@dataclass(frozen=True)
class CameraView:
    """Everything the cameras pages show about one camera."""

    camera_id: str
    device: DeviceHealth
    metrics: CameraMetrics | None
    last_event_at: datetime | None
    snapshot: Snapshot | None
    open_cases: int
    awaiting_verification: int
    zones: dict[str, Any] | None
    zones_version: str | None


@dataclass(frozen=True)
class PublishedZones:
    """A stored and delivered desired configuration."""

    device_id: str
    camera_id: str
    version: str
    document: dict[str, Any]


def _heartbeat(device: Device) -> HeartbeatV1 | None:
    if device.last_heartbeat is None:
        return None
    try:
        return HeartbeatV1.model_validate(device.last_heartbeat)
    except ValidationError:
        logger.warning("device %s: stored heartbeat does not parse, ignored", device.id)
        return None


def _health(device: Device, age_s: float | None) -> str:
    if device.last_status is None:
        return "unknown"
    if device.last_status != "online":
        return "offline"
    return "online" if age_s is not None and age_s <= STALE_AFTER_S else "stale"


def _newest_configs(session: Session, device_ids: list[str]) -> dict[str, DeviceConfig]:
    # Ids grow with every insert, so the highest id is the newest publication.
    newest = (
        select(func.max(DeviceConfig.id))
        .where(DeviceConfig.device_id.in_(device_ids))
        .group_by(DeviceConfig.device_id)
    )
    return {
        row.device_id: row for row in session.scalars(select(DeviceConfig).where(DeviceConfig.id.in_(newest)))
    }


def _device_health(device: Device, config: DeviceConfig | None, now: datetime) -> DeviceHealth:
    heartbeat = _heartbeat(device)
    heartbeat_at = as_utc(device.last_heartbeat_at)
    age_s = max(0.0, (now - heartbeat_at).total_seconds()) if heartbeat_at else None
    return DeviceHealth(
        device_id=device.id,
        health=_health(device, age_s),
        status=device.last_status,
        status_at=as_utc(device.last_status_at),
        heartbeat_at=heartbeat_at,
        heartbeat_age_s=age_s,
        camera_ids=tuple(camera.camera_id for camera in heartbeat.cameras) if heartbeat else (),
        outbox_depth=heartbeat.outbox_depth if heartbeat else None,
        model_version=heartbeat.model_version if heartbeat else None,
        desired_version=config.version if config else None,
        desired_at=as_utc(config.published_at) if config else None,
        reported_version=device.reported_config_version,
        reported_error=device.reported_config_error,
        reported_at=as_utc(device.reported_config_at),
    )


def device_health(session: Session, *, now: datetime) -> list[DeviceHealth]:
    """Every registered device, by id."""
    devices = list(session.scalars(select(Device).order_by(Device.id)))
    configs = _newest_configs(session, [device.id for device in devices])
    return [_device_health(device, configs.get(device.id), now) for device in devices]


@dataclass
class _Seen:
    """Where a camera was last reported from, while the known cameras are gathered."""

    device_id: str
    seen_at: datetime
    metrics: CameraMetrics | None = None
    last_event_at: datetime | None = None


def _known_cameras(session: Session, camera_id: str | None) -> dict[str, _Seen]:
    """Camera id -> the device that reported it most recently, from heartbeats, then from events."""
    known: dict[str, _Seen] = {}
    for device in session.scalars(select(Device).where(Device.last_heartbeat.is_not(None))):
        heartbeat, at = _heartbeat(device), as_utc(device.last_heartbeat_at)
        for camera in heartbeat.cameras if heartbeat and at else ():
            if camera_id in (None, camera.camera_id) and (
                camera.camera_id not in known or known[camera.camera_id].seen_at < at
            ):
                metrics = CameraMetrics(camera.state, camera.fps, camera.inferred_share, camera.inference_ms)
                known[camera.camera_id] = _Seen(device.id, at, metrics)
    query = select(CameraSighting.camera_id, CameraSighting.device_id, CameraSighting.last_event_at)
    if camera_id is not None:
        query = query.where(CameraSighting.camera_id == camera_id)
    for camera, device_id, newest in session.execute(query):
        newest = as_utc(newest)
        seen = known.get(camera)
        if seen is None or (seen.metrics is None and seen.seen_at < newest):
            known[camera] = _Seen(device_id, newest, last_event_at=newest)
        elif seen.device_id == device_id:
            seen.last_event_at = newest  # one row per (camera, device)
    return known


def _case_counts(session: Session, camera_id: str | None) -> dict[str, tuple[int, int]]:
    """Camera id -> (open cases, cases awaiting verification)."""
    # Only open cases count, so the (status, created_at) index spares a scan of every closed case.
    open_states = [state.value for state in CaseStatus if state not in TERMINAL_STATES]
    query = (
        select(
            Case.camera_id,
            func.count(),
            func.count().filter(Case.status == CaseStatus.AWAITING_VERIFICATION.value),
        )
        .where(Case.status.in_(open_states))
        .group_by(Case.camera_id)
    )
    if camera_id is not None:
        query = query.where(Case.camera_id == camera_id)
    return {camera: (open_, awaiting) for camera, open_, awaiting in session.execute(query)}


def _snapshot(session: Session, camera_id: str, device_id: str, restricted: bool) -> Snapshot | None:
    rows = session.execute(
        select(Event.event_id, Event.ts, Event.document)
        .where(Event.camera == camera_id, Event.device_id == device_id)
        .order_by(Event.ts.desc())
        .limit(SNAPSHOT_LOOKBACK)
    )
    for event_id, ts, document in rows:
        evidence = [
            item
            for item in document.get("evidence", [])
            if item.get("role") in SNAPSHOT_ROLES and (restricted or not item.get("restricted", True))
        ]
        # Annotated first: its faces are blurred; the clean frame is usually restricted.
        for item in sorted(evidence, key=lambda item: SNAPSHOT_ROLES.index(item["role"])):
            return Snapshot(item["sha256"], item["role"], item["width"], item["height"], event_id, as_utc(ts))
    return None


def _views(session: Session, now: datetime, camera_id: str | None, restricted: bool) -> list[CameraView]:
    known = _known_cameras(session, camera_id)
    device_ids = sorted({seen.device_id for seen in known.values()})
    devices = {
        device.id: device for device in session.scalars(select(Device).where(Device.id.in_(device_ids)))
    }
    configs = _newest_configs(session, device_ids)
    health = {
        device_id: _device_health(devices[device_id], configs.get(device_id), now) for device_id in devices
    }
    counts = _case_counts(session, camera_id)
    views = []
    for camera, seen in sorted(known.items()):
        config = configs.get(seen.device_id)
        zones = config.document.get("zones", {}).get(camera) if config else None
        open_cases, awaiting = counts.get(camera, (0, 0))
        views.append(
            CameraView(
                camera_id=camera,
                device=health[seen.device_id],
                metrics=seen.metrics,
                last_event_at=seen.last_event_at,
                snapshot=_snapshot(session, camera, seen.device_id, restricted),
                open_cases=open_cases,
                awaiting_verification=awaiting,
                zones=zones,
                zones_version=config.version if zones is not None and config else None,
            )
        )
    return views


def list_cameras(session: Session, *, now: datetime, restricted: bool = False) -> list[CameraView]:
    """Every known camera, by id; with ``restricted``, a restricted original may be the snapshot."""
    return _views(session, now, None, restricted)


def get_camera(session: Session, camera_id: str, *, now: datetime, restricted: bool = False) -> CameraView:
    """One camera; with ``restricted``, a restricted original may be the snapshot.

    Raises:
        UnknownCamera: No heartbeat or event names ``camera_id``.
    """
    views = _views(session, now, camera_id, restricted)
    if not views:
        raise UnknownCamera(f"no device reports camera {camera_id!r}")
    return views[0]


def validate_zone_document(document: Any, camera_id: str) -> ZoneFile:
    """The document as a :class:`ZoneFile` for ``camera_id``.

    Raises:
        ZoneFileInvalid: With every pydantic error as ``location: message``.
    """
    try:
        zone_file = ZoneFile.model_validate(document)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or "(document)"
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise ZoneFileInvalid(lines) from None
    if zone_file.camera != camera_id:
        raise ZoneFileInvalid([f"camera: the file is for camera {zone_file.camera!r}, not {camera_id!r}"])
    return zone_file


def _lock_device(session: Session, device_id: str) -> None:
    """Serialise publications per device, so two editors cannot both build on the same newest config."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Device.id).where(Device.id == device_id).with_for_update())
    else:
        # SQLite: take the database write lock before the newest config is read.
        session.execute(text("UPDATE devices SET id = id WHERE id = :id"), {"id": device_id})


def _version(at: datetime, previous: str, zones: dict[str, Any], detector: dict[str, Any]) -> str:
    # The previous version is hashed in, so publishing the same zones twice still gives a new version
    # (the edge ignores a version it has applied already).
    digest = hashlib.sha256(previous.encode() + canonical_bytes({"zones": zones, "detector": detector}))
    return f"{as_utc(at):%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:10]}"


def signed_desired_config(
    *, version: str, zones: dict[str, Any], detector: dict[str, Any], key: bytes
) -> dict[str, Any]:
    """A ``curbwatch.config.v1`` document signed with the device key (validated before it is returned)."""
    body = {"schema": "curbwatch.config.v1", "version": version, "zones": zones, "detector": detector}
    document = {**body, "sig": sign(body, key)}
    DesiredConfigV1.model_validate(document)
    return document


def publish_zones(
    session: Session,
    *,
    camera_id: str,
    zone_document: dict[str, Any],
    actor: str,
    role: str,
    at: datetime,
    publisher: DevicePublisher,
) -> PublishedZones:
    """Store, audit, commit and publish (retained, QoS 1) a device config with new zones for one camera.

    Args:
        session: Committed by this function (the row must survive a broker failure).
        camera_id: The camera whose zones change.
        zone_document: The new zone file, as JSON.
        actor: Who publishes (user name), for the audit log.
        role: The actor's role.
        at: Now; timezone-aware.
        publisher: Hands the message to the broker.

    Raises:
        UnknownCamera: No device reports ``camera_id``.
        ZoneFileInvalid: The document is not a valid zone file for this camera; nothing is stored.
        ZonesNotDelivered: Stored and committed, but the broker refused it.
    """
    known = _known_cameras(session, camera_id).get(camera_id)
    if known is None:
        raise UnknownCamera(f"no device reports camera {camera_id!r}")
    validate_zone_document(zone_document, camera_id)
    device_id = known.device_id
    _lock_device(session, device_id)
    key = device_key(session, device_id)
    assert key is not None  # heartbeats and events come from registered devices only
    newest = _newest_configs(session, [device_id]).get(device_id)
    previous = newest.document if newest else {}
    zones = {**previous.get("zones", {}), camera_id: json.loads(json.dumps(zone_document))}
    detector = previous.get("detector", {})
    version = _version(at, newest.version if newest else "", zones, detector)
    document = signed_desired_config(version=version, zones=zones, detector=detector, key=key)
    session.add(
        DeviceConfig(
            device_id=device_id, version=version, document=document, published_at=at, published_by=actor
        )
    )
    append_audit(
        session,
        case_id=None,
        action=PUBLISH_ACTION,
        actor=actor,
        role=role,
        at=at,
        from_state=None,
        to_state=None,
        details={"device": device_id, "camera": camera_id, "version": version},
    )
    session.commit()
    payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    try:
        publisher.publish(topic(device_id, Channel.CONFIG_DESIRED), payload, retain=True)
    except DeviceLinkError as exc:
        logger.error("config %s for %s stored but not delivered: %s", version, device_id, exc)
        raise ZonesNotDelivered(version, str(exc)) from exc
    logger.info("published zones of %s to %s as %s", camera_id, device_id, version)
    return PublishedZones(device_id, camera_id, version, document)
