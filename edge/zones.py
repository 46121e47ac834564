"""Zones at run time: ``Tracks`` -> ``ZoneHits``, schedules, and privacy masks.

A validated ``ZoneFile`` is drawn on ``frame_wh`` pixels; ``ZoneSet`` scales it to the real
stream size once, so membership tests are a vectorised point-in-polygon per zone
(``shapely.intersects_xy`` on a prepared polygon: ~8 µs for 30 anchors, against ~77 µs for a
``cv2.pointPolygonTest`` loop). A track is in a zone when its anchor (bottom-centre of the box,
where it touches the ground) is inside or on the border.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from curbwatch.edge.messages import Tracks, ZoneHits
from curbwatch.schema.zones import (
    BinSiteZone,
    NoParkingZone,
    NoVendingZone,
    PermittedVendingZone,
    PrivacyMaskZone,
    RuleZone,
    Zone,
    ZoneFile,
)

logger = logging.getLogger(__name__)

_SHIFT = 4  # fractional bits for cv2.fillPoly, so scaled masks keep sub-pixel vertices


class ZoneError(ValueError):
    """A zone lookup or input that does not fit this zone set (unknown name, wrong frame size)."""


class ZoneSet:
    """One camera's zones scaled to one stream size.

    Args:
        zone_file: The validated zone file; its polygons are in ``zone_file.frame_wh`` pixels.
        frame_wh: Width and height of the frames (and track boxes) this set will see.

    Example:
        >>> zones = ZoneSet(load_zone_file("zones/cam-01.yaml"), frame.resolution_wh)
        >>> image = zones.apply_privacy_masks(frame.image)
        >>> hits = zones.test(tracks)
        >>> hits.inside("curb-a"), "curb-a" in hits.active
    """

    def __init__(self, zone_file: ZoneFile, frame_wh: tuple[int, int]) -> None:
        width, height = frame_wh
        if width <= 0 or height <= 0:
            raise ZoneError(f"frame size must be positive, got {frame_wh}")
        self.zone_file = zone_file
        self.frame_wh = (int(width), int(height))
        self._zones: dict[str, Zone] = {zone.name: zone for zone in zone_file.zones}
        self._polygons = {
            name: self._scale(zone.polygon, self.frame_wh) for name, zone in self._zones.items()
        }
        self._shapes = {}
        for name, points in self._polygons.items():
            shape = Polygon(points)
            shapely.prepare(shape)
            self._shapes[name] = shape
        self._timezones = {name: zone_file.zone_timezone(zone) for name, zone in self._zones.items()}
        self._masks = [zone for zone in zone_file.zones if isinstance(zone, PrivacyMaskZone)]
        self._mask_polygons: dict[tuple[int, int], list[np.ndarray]] = {}

    def _scale(self, points: list[tuple[float, float]], frame_wh: tuple[int, int]) -> np.ndarray:
        drawn_w, drawn_h = self.zone_file.frame_wh
        scale = np.array([frame_wh[0] / drawn_w, frame_wh[1] / drawn_h], np.float32)
        return np.asarray(points, np.float32) * scale

    def zone(self, name: str) -> Zone:
        """The zone called ``name``.

        Raises:
            ZoneError: No zone has that name.
        """
        try:
            return self._zones[name]
        except KeyError:
            known = ", ".join(self._zones)
            raise ZoneError(
                f"camera {self.zone_file.camera} has no zone {name!r} (it has: {known})"
            ) from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._zones)

    def rule_zones(self) -> tuple[RuleZone, ...]:
        """The zones a rule watches: no_parking, no_vending and bin_site."""
        kinds = (NoParkingZone, NoVendingZone, BinSiteZone)
        return tuple(zone for zone in self._zones.values() if isinstance(zone, kinds))

    def permitted_vending_zones(self) -> tuple[PermittedVendingZone, ...]:
        return tuple(zone for zone in self._zones.values() if isinstance(zone, PermittedVendingZone))

    def polygon_px(self, name: str) -> np.ndarray:
        """The zone's polygon in this stream's pixels, float32 (K, 2); a copy."""
        self.zone(name)
        return self._polygons[name].copy()

    def local_time(self, name: str, ts: float) -> datetime:
        """Frame time ``ts`` as wall-clock time in the zone's time zone."""
        self.zone(name)
        return datetime.fromtimestamp(ts, self._timezones[name])

    def is_active(self, name: str, ts: float) -> bool:
        """Whether the zone's schedule is in force at frame time ``ts`` (no schedule: always)."""
        schedule = self.zone(name).schedule
        if not schedule:
            return True
        local = datetime.fromtimestamp(ts, self._timezones[name])
        return any(window.contains(local) for window in schedule)

    def anchor_in(self, name: str, xy: tuple[float, float]) -> bool:
        """Whether a point in stream pixels lies inside the zone or on its border."""
        self.zone(name)
        return bool(shapely.intersects_xy(self._shapes[name], float(xy[0]), float(xy[1])))

    def test(self, tracks: Tracks) -> ZoneHits:
        """Which tracks stand in which zone, and which zones are in force, at ``tracks.ts``.

        Raises:
            ZoneError: The tracks refer to another frame size than this set's.
        """
        if tuple(tracks.frame_wh) != self.frame_wh:
            raise ZoneError(f"tracks are for a {tracks.frame_wh} frame, zones for {self.frame_wh}")
        local_by_tz: dict[ZoneInfo, datetime] = {}
        active = set()
        for name, zone in self._zones.items():
            if not zone.schedule:
                active.add(name)
                continue
            tz = self._timezones[name]
            local = local_by_tz.setdefault(tz, datetime.fromtimestamp(tracks.ts, tz))
            if any(window.contains(local) for window in zone.schedule):
                active.add(name)
        members: dict[str, tuple[int, ...]] = {}
        if tracks.items:
            anchors = np.array([track.anchor_xy for track in tracks.items], np.float64)
            ids = np.array([track.track_id for track in tracks.items])
            for name, shape in self._shapes.items():
                inside = shapely.intersects_xy(shape, anchors[:, 0], anchors[:, 1])
                members[name] = tuple(int(i) for i in ids[inside])
        else:
            members = {name: () for name in self._zones}
        return ZoneHits(ts=tracks.ts, active=frozenset(active), members=members)

    def apply_privacy_masks(self, image: np.ndarray) -> np.ndarray:
        """A copy of ``image`` with every privacy-mask polygon filled black.

        Returns ``image`` itself, not a copy, when the file has no masks. Polygons are scaled to
        the image's own size (cached per size). Filling the scaled polygons into a copy measured
        ~0.3 ms on a 1080p frame, against ~1 ms for ``cv2.bitwise_and`` with a pre-drawn mask.
        """
        if not self._masks:
            return image
        if image.ndim not in (2, 3):
            raise ZoneError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
        size = (int(image.shape[1]), int(image.shape[0]))
        polygons = self._mask_polygons.get(size)
        if polygons is None:
            polygons = [
                np.round(self._scale(zone.polygon, size) * (1 << _SHIFT)).astype(np.int32)
                for zone in self._masks
            ]
            self._mask_polygons[size] = polygons
            logger.debug("privacy masks of %s scaled to %s", self.zone_file.camera, size)
        out = image.copy()
        black = 0 if image.ndim == 2 else (0,) * image.shape[2]
        cv2.fillPoly(out, polygons, black, lineType=cv2.LINE_8, shift=_SHIFT)
        return out
