"""Zone file schema (``zones/<camera>.yaml``), shared by the edge and the server.

One file per camera. Polygon coordinates are pixels of ``frame_wh``; the edge scales them to
the real frame size, so a zone survives a change of stream resolution. Every zone kind is a
member of a discriminated union on ``kind``.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from shapely.geometry import Polygon
from shapely.validation import explain_validity

from curbwatch.schema.yamlio import load_yaml_model

ZONE_FILE_VERSION = 1

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EventCode = Annotated[
    str, Field(pattern=r"^\d{4}$", description="City event code: 2-digit major + 2-digit minor class.")
]


class Violation(StrEnum):
    """Kinds of violation; each maps to one city event code."""

    ILLEGAL_PARKING = "illegal_parking"
    ILLEGAL_PARKING_TWO_WHEELER = "illegal_parking_two_wheeler"
    UNLICENSED_VENDING = "unlicensed_vending"
    BIN_OVERFLOW = "bin_overflow"


class Rule(StrEnum):
    """The rule that produces a violation."""

    ILLEGAL_PARKING = "illegal_parking"
    UNLICENSED_VENDING = "unlicensed_vending"
    BIN_OVERFLOW = "bin_overflow"


RULE_OF_VIOLATION: dict[Violation, Rule] = {
    Violation.ILLEGAL_PARKING: Rule.ILLEGAL_PARKING,
    Violation.ILLEGAL_PARKING_TWO_WHEELER: Rule.ILLEGAL_PARKING,
    Violation.UNLICENSED_VENDING: Rule.UNLICENSED_VENDING,
    Violation.BIN_OVERFLOW: Rule.BIN_OVERFLOW,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventCodeEntry(_Strict):
    """One row of a city's event-code table."""

    code: EventCode
    name: str = Field(
        title="Name", description="Human name of the event type, as the city platform shows it."
    )


def default_event_codes() -> dict[Violation, EventCodeEntry]:
    """The national standard's common codes for each violation (cities override them)."""
    return {
        Violation.ILLEGAL_PARKING: EventCodeEntry(
            code="0505", name="机动车乱停放 illegal motor-vehicle parking"
        ),
        Violation.ILLEGAL_PARKING_TWO_WHEELER: EventCodeEntry(
            code="0506", name="非机动车乱停放 illegal bicycle/scooter parking"
        ),
        Violation.UNLICENSED_VENDING: EventCodeEntry(
            code="0501", name="无照经营游商 unlicensed itinerant vending"
        ),
        Violation.BIN_OVERFLOW: EventCodeEntry(code="0102", name="暴露垃圾 exposed rubbish"),
    }


class ScheduleWindow(_Strict):
    """A weekly time window. ``end`` before ``start`` means the window runs past midnight."""

    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        title="Days",
        description="Days the window starts on.",
    )
    start: time = Field(title="Start", description="Local start time, HH:MM.")
    end: time = Field(
        title="End", description="Local end time, HH:MM; earlier than start for overnight windows."
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def parse_hhmm(cls, value: Any) -> Any:
        if isinstance(value, int):
            # YAML 1.1 reads unquoted 18:00 as a sexagesimal integer (1080); undo that.
            return time(value // 60, value % 60) if 0 <= value < 24 * 60 else value
        if isinstance(value, str):
            match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
            if match and value.strip() == "24:00":
                return time(23, 59, 59, 999999)
            if match and int(match[1]) < 24 and int(match[2]) < 60:
                return time(int(match[1]), int(match[2]))
        return value

    @model_validator(mode="after")
    def verify_not_empty(self) -> ScheduleWindow:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        if len(set(self.days)) != len(self.days):
            raise ValueError("a day is listed twice")
        return self

    def contains(self, local: datetime) -> bool:
        """Whether a local wall-clock time falls in this window."""
        day = WEEKDAYS[local.weekday()]
        clock = local.time()
        if self.start < self.end:
            return day in self.days and self.start <= clock < self.end
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        return (day in self.days and clock >= self.start) or (yesterday in self.days and clock < self.end)


class _ZoneBase(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        title="Name",
        description="Zone name, unique within the camera.",
    )
    polygon: list[tuple[float, float]] = Field(
        min_length=3, title="Polygon", description="Vertices [x, y] in pixels of the file's frame_wh."
    )
    schedule: list[ScheduleWindow] = Field(
        default_factory=list,
        title="Schedule",
        description="When the zone is in force; empty means always.",
    )
    timezone: str | None = Field(
        default=None, title="Time zone", description="Overrides the file's time zone."
    )

    @field_validator("polygon")
    @classmethod
    def verify_polygon(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        shape = Polygon(points)
        if shape.area <= 0:
            raise ValueError("polygon has no area")
        if not shape.is_valid:
            raise ValueError(f"polygon is not simple ({explain_validity(shape)})")
        return points

    @field_validator("timezone")
    @classmethod
    def verify_timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)


class _RuleZone(_ZoneBase):
    min_dwell_s: float = Field(
        gt=0,
        title="Minimum dwell (s)",
        description="How long the situation must hold before it is a violation.",
    )
    event_codes: dict[Violation, EventCodeEntry] = Field(
        default_factory=dict,
        title="Event codes",
        description="Overrides the file's event-code table for this zone.",
    )


def _known_classes(classes: list[str], info: ValidationInfo) -> list[str]:
    """Reject classes the detector does not know, when the loader was given its vocabulary."""
    known = (info.context or {}).get("class_names")
    if known is not None:
        unknown = [name for name in classes if name not in known]
        if unknown:
            raise ValueError(
                f"classes the model does not know: {', '.join(unknown)} (it knows: {', '.join(known)})"
            )
    if len(set(classes)) != len(classes):
        raise ValueError("a class is listed twice")
    return classes


class NoParkingZone(_RuleZone):
    """Vehicles must not stay here."""

    kind: Literal["no_parking"] = Field(
        title="Kind",
        description="A no-parking zone: vehicles standing still longer than min_dwell_s are flagged.",
    )
    min_dwell_s: float = Field(
        default=180.0,
        gt=0,
        title="Minimum dwell (s)",
        description="How long a vehicle must stand still before it is flagged.",
    )
    vehicle_classes: list[str] = Field(
        default_factory=lambda: ["car", "truck", "bus"],
        title="Vehicle classes",
        description="Detector classes filed as motor-vehicle parking.",
    )
    two_wheeler_classes: list[str] = Field(
        default_factory=lambda: ["motorcycle", "bicycle"],
        title="Two-wheeler classes",
        description="Detector classes filed as two-wheeler parking (their own event code).",
    )

    _verify_classes = field_validator("vehicle_classes", "two_wheeler_classes")(_known_classes)


class NoVendingZone(_RuleZone):
    """People with vending objects must not set up here."""

    kind: Literal["no_vending"] = Field(
        title="Kind",
        description="A no-vending zone: a staffed stall standing longer than min_dwell_s is flagged.",
    )
    min_dwell_s: float = Field(
        default=120.0,
        gt=0,
        title="Minimum dwell (s)",
        description="How long a stall must stay before it is flagged.",
    )
    person_classes: list[str] = Field(
        default_factory=lambda: ["person"],
        title="Person classes",
        description="Classes that count as the vendor.",
    )
    vending_classes: list[str] = Field(
        default_factory=lambda: ["umbrella", "dining table", "chair"],
        title="Vending-object classes",
        description="Classes that make a stall (umbrella, table, chair, cart, a custom model's stall class).",
    )
    vendor_radius: float = Field(
        default=1.5,
        gt=0,
        title="Vendor radius",
        description="How near a person must be to the stall, in stall-box diagonals.",
    )

    _verify_classes = field_validator("person_classes", "vending_classes")(_known_classes)


class BinSiteZone(_RuleZone):
    """Where bins stand; overflow is judged on the image inside the polygon."""

    kind: Literal["bin_site"] = Field(
        title="Kind", description="A bin site: overflow is judged on the image inside the polygon."
    )
    min_dwell_s: float = Field(
        default=300.0,
        gt=0,
        title="Minimum dwell (s)",
        description="How long the overflowing state must hold before it is flagged.",
    )
    clear_dwell_s: float = Field(
        default=120.0,
        gt=0,
        title="Clear dwell (s)",
        description="How long the site must look clean before the episode ends.",
    )


class PermittedVendingZone(_ZoneBase):
    """A licensed vending area: no vending violation inside it during its schedule."""

    kind: Literal["permitted_vending"] = Field(
        title="Kind",
        description="A licensed vending area: no vending violation inside it during its schedule.",
    )


class PrivacyMaskZone(_ZoneBase):
    """Blanked before inference and in every stored image."""

    kind: Literal["privacy_mask"] = Field(
        title="Kind", description="A privacy mask: blanked before inference and in every stored image."
    )

    @field_validator("schedule")
    @classmethod
    def verify_always(cls, value: list[ScheduleWindow]) -> list[ScheduleWindow]:
        if value:
            raise ValueError("privacy masks are always in force and take no schedule")
        return value


Zone = Annotated[
    NoParkingZone | NoVendingZone | BinSiteZone | PermittedVendingZone | PrivacyMaskZone,
    Field(discriminator="kind"),
]
RuleZone = NoParkingZone | NoVendingZone | BinSiteZone


class GeoPoint(_Strict):
    """WGS-84 position of the camera or the scene."""

    lat: float = Field(ge=-90, le=90, title="Latitude", description="Degrees north (WGS-84).")
    lon: float = Field(ge=-180, le=180, title="Longitude", description="Degrees east (WGS-84).")


def check_timezone(value: str) -> str:
    """Return ``value`` if it names a zone in the tz database, else raise ValueError."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}") from exc
    return value


def _zone_issue(kind: str, message: str, loc: tuple[str | int, ...], value: Any) -> InitErrorDetails:
    # Braces in a zone name must not be read as format fields by pydantic.
    text = message.replace("{", "{{").replace("}", "}}")
    return InitErrorDetails(type=PydanticCustomError(kind, text), loc=loc, input=value)


class ZoneFile(_Strict):
    """All zones of one camera."""

    version: Literal[1] = Field(title="Version", description="Zone file format version.")
    camera: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        title="Camera id",
        description="The camera these zones belong to; must equal its id in edge.yaml.",
    )
    frame_wh: tuple[int, int] = Field(
        title="Frame size", description="Width and height the polygons are drawn on."
    )
    timezone: str = Field(
        title="Time zone", description="IANA time zone of the schedules, e.g. Asia/Shanghai."
    )
    location: GeoPoint | None = Field(default=None, title="Location", description="Where the camera looks.")
    event_codes: dict[Violation, EventCodeEntry] = Field(
        default_factory=default_event_codes, title="Event codes", description="The city's event-code table."
    )
    zones: list[Zone] = Field(
        min_length=1, title="Zones", description="The camera's zones; `kind` says what each one is."
    )

    @field_validator("timezone")
    @classmethod
    def verify_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("frame_wh")
    @classmethod
    def verify_frame(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError("frame width and height must be positive")
        return value

    @field_validator("event_codes", mode="after")
    @classmethod
    def fill_codes(cls, value: dict[Violation, EventCodeEntry]) -> dict[Violation, EventCodeEntry]:
        return {**default_event_codes(), **value}

    @model_validator(mode="after")
    def verify_zones(self) -> ZoneFile:
        # Errors carry the offending zone's loc, so the YAML loader can point at its line.
        issues: list[InitErrorDetails] = []
        seen: set[str] = set()
        width, height = self.frame_wh
        for index, zone in enumerate(self.zones):
            if zone.name in seen:
                message = f"zone names must be unique; {zone.name} is repeated"
                issues.append(_zone_issue("duplicate_zone", message, ("zones", index, "name"), zone.name))
            seen.add(zone.name)
            if any(not (0 <= x <= width and 0 <= y <= height) for x, y in zone.polygon):
                message = f"zone {zone.name}: polygon leaves the {width}x{height} frame"
                loc = ("zones", index, "polygon")
                issues.append(_zone_issue("zone_outside_frame", message, loc, zone.polygon))
        if issues:
            raise ValidationError.from_exception_data(type(self).__name__, issues)
        return self

    def event_code(self, zone: RuleZone, violation: Violation) -> EventCodeEntry:
        """The event code a zone files a violation under."""
        return zone.event_codes.get(violation) or self.event_codes[violation]

    def zone_timezone(self, zone: _ZoneBase) -> ZoneInfo:
        return ZoneInfo(zone.timezone or self.timezone)


def load_zone_file(path: Path | str, class_names: list[str] | tuple[str, ...] | None = None) -> ZoneFile:
    """Load and validate a zone file; with ``class_names``, also check every class exists."""
    return load_yaml_model(ZoneFile, path, context={"class_names": class_names})
