"""Devices and cameras: health, latest snapshot, current zones; publishing zones to the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field, computed_field

from curbwatch.server import cameras
from curbwatch.server.cameras import CameraError, UnknownCamera, ZoneFileInvalid, ZonesNotDelivered
from curbwatch.server.cases.queries import sees_restricted
from curbwatch.server.web.deps import Context, Db, Operator, Supervisor

router = APIRouter(prefix="/api/v1", tags=["cameras"])

CameraId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]
_STATUS: dict[type[CameraError], int] = {
    UnknownCamera: status.HTTP_404_NOT_FOUND,
    ZoneFileInvalid: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ZonesNotDelivered: status.HTTP_502_BAD_GATEWAY,
}


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class DeviceOut(_Out):
    """A device's health and configuration versions."""

    device_id: str
    health: str = Field(description="online, stale (no heartbeat for 3 minutes), offline or unknown.")
    status: str | None = Field(description="Last retained status: online or offline.")
    status_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_age_s: float | None
    camera_ids: list[str] = Field(description="Cameras in the latest heartbeat.")
    outbox_depth: int | None
    model_version: str | None
    desired_version: str | None = Field(description="Newest configuration the server published.")
    desired_at: datetime | None
    reported_version: str | None = Field(description="Configuration the device says it applied.")
    reported_error: str | None = Field(description="Why the device refused the last configuration.")
    reported_at: datetime | None


class MetricsOut(_Out):
    """A camera's figures from the latest heartbeat."""

    state: str
    fps: float
    inferred_share: float
    inference_ms: float


class SnapshotOut(_Out):
    """The newest annotated (else clean) evidence image of the camera."""

    sha256: str
    role: str
    width: int
    height: int
    event_id: str
    ts: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str:
        """Where the image is served (signed-in users)."""
        return f"/evidence/{self.sha256}"


class CameraOut(_Out):
    """One camera, its device, its latest snapshot, case counts and current zones."""

    camera_id: str
    device: DeviceOut
    metrics: MetricsOut | None
    last_event_at: datetime | None
    snapshot: SnapshotOut | None
    open_cases: int
    awaiting_verification: int
    zones: dict[str, Any] | None = Field(description="Zone file from the newest published configuration.")
    zones_version: str | None


class PublishOut(BaseModel):
    """A configuration the broker accepted (retained for the device)."""

    device_id: str
    camera_id: str
    version: str


def _http(exc: CameraError) -> HTTPException:
    return HTTPException(_STATUS[type(exc)], str(exc))


@router.get("/devices", response_model=list[DeviceOut])
def devices(_: Operator, context: Context, session: Db) -> list[DeviceOut]:
    """Every registered device with its health and configuration versions."""
    return [DeviceOut.model_validate(item) for item in cameras.device_health(session, now=context.clock())]


@router.get("/cameras", response_model=list[CameraOut])
def camera_list(principal: Operator, context: Context, session: Db) -> list[CameraOut]:
    """Every camera named by a heartbeat or an event."""
    views = cameras.list_cameras(session, now=context.clock(), restricted=sees_restricted(principal.role))
    return [CameraOut.model_validate(item) for item in views]


@router.get("/cameras/{camera_id}", response_model=CameraOut)
def camera_detail(camera_id: CameraId, principal: Operator, context: Context, session: Db) -> CameraOut:
    """One camera; 404 when no heartbeat or event names it."""
    restricted = sees_restricted(principal.role)
    try:
        view = cameras.get_camera(session, camera_id, now=context.clock(), restricted=restricted)
        return CameraOut.model_validate(view)
    except CameraError as exc:
        raise _http(exc) from None


@router.put("/cameras/{camera_id}/zones", response_model=PublishOut)
def put_zones(
    camera_id: CameraId,
    zone_file: Annotated[
        dict[str, Any],
        Body(description="A zone file (zones/<camera>.yaml as JSON), docs/schemas/curbwatch.zones.v1.json."),
    ],
    principal: Supervisor,
    context: Context,
    session: Db,
) -> PublishOut:
    """Validate the zone file and publish the device's new signed configuration (retained).

    422 lists every problem with its location; 502 means the configuration was stored but the
    broker did not take it (the device has not got it).
    """
    try:
        published = cameras.publish_zones(
            session,
            camera_id=camera_id,
            zone_document=zone_file,
            actor=principal.username,
            role=principal.role.value,
            at=context.clock(),
            publisher=context.publisher,
        )
    except CameraError as exc:
        raise _http(exc) from None
    return PublishOut(device_id=published.device_id, camera_id=camera_id, version=published.version)
