"""Violation event wire format ``curbwatch.event.v1``, shared by the edge and the server.

An episode (one violation from first flag to its end) produces one ``start`` event, any number
of ``update`` events and one ``end`` event, all carrying the same ``episode_id``. Each event has
its own ``event_id`` so a receiver can de-duplicate at-least-once deliveries. Times are frame
timestamps (when the camera saw it), in UTC ISO 8601.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from curbwatch.schema.zones import Rule, Violation

EVENT_SCHEMA = "curbwatch.event.v1"

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex sha256.")]


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]


def ts_to_datetime(ts_s: float) -> datetime:
    """A frame timestamp (seconds since the Unix epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(ts_s, tz=UTC)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventType(StrEnum):
    """Where in its episode's life an event stands."""

    START = "start"
    UPDATE = "update"
    END = "end"


class EndReason(StrEnum):
    """Why an episode ended."""

    LEFT = "left"  # the object or group went away
    CLEARED = "cleared"  # the bin site looks clean again
    SCHEDULE_ENDED = "schedule_ended"  # the zone went out of force
    STREAM_ENDED = "stream_ended"  # the source ended or the edge shut down
    ZONES_CHANGED = "zones_changed"  # a new zone configuration replaced the zone


class EvidenceRole(StrEnum):
    """What an evidence image shows."""

    CLEAN = "clean"  # full frame as captured (privacy masks applied); restricted access
    ANNOTATED = "annotated"  # boxes, zone outline, labels, dwell; faces blurred
    CROP = "crop"  # one object; faces blurred


class ObjectV1(_Wire):
    """A detected object that takes part in the violation."""

    track_id: int = Field(ge=0)
    label: str
    score: float = Field(ge=0, le=1)
    xyxy: tuple[float, float, float, float] = Field(description="Box in pixels of the event's frame_wh.")
    stationary_s: float = Field(ge=0, description="How long the object has stood still.")


class EvidenceRefV1(_Wire):
    """An evidence image, identified by the sha256 of its bytes."""

    role: EvidenceRole
    sha256: Sha256
    media_type: Literal["image/jpeg"] = "image/jpeg"
    size_bytes: int = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    path: str = Field(description="Path relative to the edge's evidence store.")
    track_id: int | None = Field(default=None, description="The object a crop shows.")
    derived_from: Sha256 | None = Field(
        default=None, description="sha256 of the clean frame a derivative was made from."
    )
    restricted: bool = Field(description="True for originals that show faces and plates.")


class ModelRefV1(_Wire):
    """Which model produced the detections."""

    name: str
    version: str
    sha256: Sha256
    family: str


class EventV1(_Wire):
    """One violation event."""

    schema_: Literal["curbwatch.event.v1"] = Field(default=EVENT_SCHEMA, alias="schema")
    event_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="Unique per event; receivers de-duplicate on it."
    )
    episode_id: str = Field(
        pattern=r"^[0-9a-f]{32}$", description="Shared by the start, updates and end of an episode."
    )
    type: EventType
    device_id: str = Field(min_length=1, max_length=64)
    camera_id: str = Field(min_length=1, max_length=64)
    zone: str = Field(min_length=1, max_length=64)
    rule: Rule
    violation: Violation
    event_code: str = Field(pattern=r"^\d{4}$")
    event_name: str
    episode_start: UtcDatetime = Field(
        description="Frame time the violation condition began (before the dwell)."
    )
    ts: UtcDatetime = Field(description="Frame time of this event.")
    dwell_s: float = Field(ge=0, description="ts minus episode_start.")
    end_reason: EndReason | None = Field(default=None, description="Set on end events only.")
    frame_wh: tuple[int, int]
    objects: list[ObjectV1] = Field(default_factory=list)
    state_score: float | None = Field(default=None, description="Bin rule: the estimator's overflow score.")
    evidence: list[EvidenceRefV1] = Field(default_factory=list)
    model: ModelRefV1 | None = Field(default=None, description="Detector that saw the objects.")
    estimator: str | None = Field(default=None, description="State estimator used by the bin rule.")
    location: tuple[float, float] | None = Field(default=None, description="Camera position as (lat, lon).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def example_event_document(**overrides: Any) -> dict[str, Any]:
    """A valid ``curbwatch.event.v1`` document with fresh ids (documentation, benchmarks, tests)."""
    document: dict[str, Any] = {
        "schema": EVENT_SCHEMA,
        "event_id": uuid.uuid4().hex,
        "episode_id": uuid.uuid4().hex,
        "type": "start",
        "device_id": "edge-1",
        "camera_id": "cam-1",
        "zone": "kerb",
        "rule": "illegal_parking",
        "violation": "illegal_parking",
        "event_code": "0505",
        "event_name": "illegal parking",
        "episode_start": "2026-11-27T01:00:00+00:00",
        "ts": "2026-11-27T01:02:00+00:00",
        "dwell_s": 120.0,
        "frame_wh": [1280, 720],
    }
    return {**document, **overrides}


def event_json_schema() -> dict[str, object]:
    """The JSON Schema of ``curbwatch.event.v1``, as committed in ``docs/schemas``."""
    schema = EventV1.model_json_schema(by_alias=True)
    schema["$id"] = "https://curbwatch.dev/schemas/curbwatch.event.v1.json"
    return schema
