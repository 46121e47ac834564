"""Street geometry: a pinhole camera looking straight across a street, and the zones on it.

Ground coordinates are metres: ``x`` runs along the street (0 in front of the camera, positive to
the right), ``z`` is the distance from the camera, ``y`` the height above the ground. The camera
stands ``CAM_HEIGHT_M`` above the near pavement with a level view, so lines along the street stay
horizontal and everything further away is smaller and higher in the image. Geometry is designed
for a 1280x720 reference frame and scaled to the output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely.geometry import MultiPoint, Polygon, box

from curbwatch.schema.zones import ZONE_FILE_VERSION, ZoneFile

REF_WH = (1280, 720)
FOCAL_PX = 700.0  # focal length in reference pixels
HORIZON_PX = 200.0  # image row of the horizon in the reference frame
CAM_HEIGHT_M = 5.0

# Bands across the street (z, metres from the camera).
PAVEMENT_NEAR_Z = 3500.0 / 520.0  # where the near pavement leaves the bottom of the frame
KERB_Z = 9.0
PARKING_LANE_Z = 10.1  # centre of a car standing at the kerb
NEAR_LANE_Z = 11.9  # centre of a car driving left to right
CENTRE_LINE_Z = 13.4
FAR_LANE_Z = 15.0  # centre of a car driving right to left
FAR_KERB_Z = 16.5
FACADE_Z = 19.0

# Stretches along the near pavement (x ranges, metres).
HATCH_X = (-6.2, -3.0)  # yellow-hatched pavement strip: no two-wheeler parking
BIKE_BAY_X = (-2.6, -0.6)  # painted bay where two-wheelers may stand
STALL_X = 1.3  # where the vendor sets up
BIN_X = 4.9  # the bin's centre
BIN_Z = 7.9


@dataclass(frozen=True)
class Camera:
    """Projects ground coordinates to pixels of one output size."""

    frame_wh: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return self.frame_wh[0] / REF_WH[0], self.frame_wh[1] / REF_WH[1]

    def project(self, x: float, z: float, y: float = 0.0) -> tuple[float, float]:
        """Pixel (u, v) of the ground point (x, z) raised by ``y``."""
        sx, sy = self.scale
        u = REF_WH[0] / 2 + FOCAL_PX * x / z
        v = HORIZON_PX + FOCAL_PX * (CAM_HEIGHT_M - y) / z
        return u * sx, v * sy

    def project_many(self, points: np.ndarray) -> np.ndarray:
        """Project an (N, 3) array of (x, z, y) points to an (N, 2) pixel array."""
        sx, sy = self.scale
        x, z, y = points[:, 0], points[:, 1], points[:, 2]
        u = (REF_WH[0] / 2 + FOCAL_PX * x / z) * sx
        v = (HORIZON_PX + FOCAL_PX * (CAM_HEIGHT_M - y) / z) * sy
        return np.stack([u, v], axis=1)

    def visible_half_width(self, z: float) -> float:
        """Half the street length (metres) the camera sees at distance ``z``."""
        return z * (REF_WH[0] / 2) / FOCAL_PX

    def px(self, x: float, z: float, y: float = 0.0) -> tuple[int, int]:
        u, v = self.project(x, z, y)
        return round(u), round(v)

    def ground_polygon(self, x_range: tuple[float, float], z_range: tuple[float, float]) -> np.ndarray:
        """Pixel corners of a ground rectangle, as an int32 array for ``cv2.fillPoly``."""
        (x0, x1), (z0, z1) = x_range, z_range
        corners = [(x0, z0), (x1, z0), (x1, z1), (x0, z1)]
        return np.array([self.px(x, z) for x, z in corners], np.int32)

    def frame_box(self) -> Polygon:
        return box(0, 0, *self.frame_wh)


@dataclass(frozen=True)
class Dwells:
    """Minimum dwell of each rule zone, seconds (they scale with the scene length)."""

    kerb: float
    hatch: float
    vending: float
    bin_site: float


def _clip(polygon: Polygon, frame: Polygon) -> list[list[float]]:
    # Zone files must stay inside the frame; keep one decimal so the YAML stays readable.
    clipped = polygon.intersection(frame)
    ring = list(clipped.exterior.coords)[:-1]
    return [[round(x, 1), round(y, 1)] for x, y in ring]


def zone_polygons(camera: Camera) -> dict[str, list[list[float]]]:
    """Pixel polygons of the four rule zones, clipped to the frame."""
    frame = camera.frame_box()
    far_x = camera.visible_half_width(KERB_Z + 1.4) + 1.0
    near_x = camera.visible_half_width(KERB_Z) + 1.0
    kerb = Polygon(camera.ground_polygon((-far_x, far_x), (KERB_Z, KERB_Z + 1.4)))
    pavement = Polygon(camera.ground_polygon((-near_x, near_x), (PAVEMENT_NEAR_Z - 0.5, KERB_Z)))
    hatch = Polygon(camera.ground_polygon(HATCH_X, (6.9, 8.8)))
    # The bin site is the box around the bin and the ground beside it, so the bin rule sees both.
    site = np.array(
        [
            (x, z, y)
            for x in (BIN_X - 1.3, BIN_X + 1.3)
            for z in (BIN_Z - 1.0, BIN_Z + 0.8)
            for y in (0.0, 1.5)
        ]
    )
    bin_site = MultiPoint([tuple(p) for p in camera.project_many(site)]).convex_hull
    return {
        "kerb": _clip(kerb, frame),
        "pavement": _clip(pavement, frame),
        "hatch": _clip(hatch, frame),
        "bin-site": _clip(bin_site, frame),
    }


def zone_document(
    camera: Camera,
    camera_id: str,
    dwells: Dwells,
    timezone: str,
    location: tuple[float, float] | None = None,
) -> dict:
    """The zone file of the rendered street as plain data (for YAML).

    ``location`` (latitude, longitude) places the camera on the map: the server files its cases in
    that grid cell and Open311 reports carry it. The zones keep the schema's default class lists:
    the scenes' labels are the COCO names those defaults use, and a file that names no classes
    loads against any detector's vocabulary.
    """
    polygons = zone_polygons(camera)
    placed = {"location": {"lat": location[0], "lon": location[1]}} if location else {}
    return {
        "version": ZONE_FILE_VERSION,
        "camera": camera_id,
        "frame_wh": list(camera.frame_wh),
        "timezone": timezone,
        **placed,
        "zones": [
            {
                "name": "kerb",
                "kind": "no_parking",
                "polygon": polygons["kerb"],
                "min_dwell_s": dwells.kerb,
            },
            {
                "name": "hatch",
                "kind": "no_parking",
                "polygon": polygons["hatch"],
                "min_dwell_s": dwells.hatch,
            },
            {
                "name": "pavement",
                "kind": "no_vending",
                "polygon": polygons["pavement"],
                "min_dwell_s": dwells.vending,
            },
            {
                "name": "bin-site",
                "kind": "bin_site",
                "polygon": polygons["bin-site"],
                "min_dwell_s": dwells.bin_site,
                "clear_dwell_s": dwells.bin_site,
            },
        ],
    }


def zone_file(camera: Camera, camera_id: str, dwells: Dwells, timezone: str) -> ZoneFile:
    """The validated zone file of the rendered street."""
    return ZoneFile.model_validate(zone_document(camera, camera_id, dwells, timezone))
