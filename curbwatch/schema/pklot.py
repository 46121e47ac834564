"""Import parking-bay polygons from the PKLot XML format into a zone file.

PKLot (Almeida et al. 2015) describes each bay as ``<space id occupied>`` with a ``rotatedRect``
and a 4-point ``contour``. We take the contour and fall back to the rotated rectangle's corners
when the contour is missing or not a simple polygon.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from shapely.geometry import Polygon

from curbwatch.schema.zones import ZoneFile


class PklotError(ValueError):
    """The XML is not a PKLot parking description."""


def _rotated_rect_corners(space: ET.Element) -> list[tuple[float, float]]:
    rect = space.find("rotatedRect")
    if rect is None:
        return []
    center, size, angle = rect.find("center"), rect.find("size"), rect.find("angle")
    if center is None or size is None or angle is None:
        return []
    cx, cy = float(center.get("x", "nan")), float(center.get("y", "nan"))
    half_w, half_h = float(size.get("w", "nan")) / 2, float(size.get("h", "nan")) / 2
    theta = math.radians(float(angle.get("d", "0")))
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    corners = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
    return [(cx + x * cos_t - y * sin_t, cy + x * sin_t + y * cos_t) for x, y in corners]


def _bay_polygon(space: ET.Element) -> list[tuple[float, float]]:
    contour = [(float(p.get("x", "nan")), float(p.get("y", "nan"))) for p in space.iterfind("contour/point")]
    if len(contour) >= 3 and Polygon(contour).is_valid and Polygon(contour).area > 0:
        return contour
    corners = _rotated_rect_corners(space)
    if len(corners) == 4 and all(math.isfinite(v) for xy in corners for v in xy):
        return corners
    raise PklotError(f"space {space.get('id')!r} has neither a valid contour nor a rotatedRect")


def pklot_to_zone_file(
    xml_path: Path | str,
    *,
    camera: str,
    frame_wh: tuple[int, int],
    timezone: str,
    kind: str = "no_parking",
    min_dwell_s: float | None = None,
) -> ZoneFile:
    """Read a PKLot XML file and build a validated zone file with one zone per bay.

    Bays are clipped to the frame, since PKLot contours sometimes overhang its edge by a pixel.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise PklotError(f"{xml_path}: cannot read PKLot XML: {exc}") from exc
    if root.tag != "parking":
        raise PklotError(f"{xml_path}: root element is <{root.tag}>, expected <parking>")
    spaces = root.findall("space")
    if not spaces:
        raise PklotError(f"{xml_path}: no <space> elements")
    width, height = frame_wh
    zones: list[dict[str, Any]] = []
    for space in spaces:
        polygon = [
            (round(min(max(x, 0.0), width), 1), round(min(max(y, 0.0), height), 1))
            for x, y in _bay_polygon(space)
        ]
        zone: dict[str, Any] = {"name": f"bay-{space.get('id')}", "kind": kind, "polygon": polygon}
        if min_dwell_s is not None:
            zone["min_dwell_s"] = min_dwell_s
        zones.append(zone)
    return ZoneFile.model_validate(
        {"version": 1, "camera": camera, "frame_wh": frame_wh, "timezone": timezone, "zones": zones}
    )


def zone_file_to_yaml(zone_file: ZoneFile) -> str:
    """Zone file as YAML, leaving out defaults so the output stays short and editable."""
    from curbwatch.schema.yamlio import dump_yaml

    data = zone_file.model_dump(mode="json", exclude_defaults=True)
    data = {"version": zone_file.version, **data}
    data["zones"] = [
        {
            "name": zone.pop("name"),
            "kind": zone.pop("kind"),
            **zone,
            "polygon": [list(p) for p in zone["polygon"]],
        }
        for zone in data["zones"]
    ]
    data["frame_wh"] = list(zone_file.frame_wh)
    return dump_yaml(data)
