"""Objects as lists of 3-D parts (boxes, discs, polygons) and how to draw them with OpenCV.

A sprite's parts serve twice: the renderer draws them and the ground truth takes its box from
their projection, so a box fits what is drawn exactly. Parts marked ``in_box=False`` (rubbish bags
around a bin) are drawn but belong to no object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from curbwatch.edge.synth.layout import CAM_HEIGHT_M, FOCAL_PX, Camera
from curbwatch.edge.synth.script import Actor

Color = tuple[int, int, int]
GLASS: Color = (95, 75, 55)
TYRE: Color = (25, 25, 25)
SKIN: Color = (150, 180, 215)
RUBBISH: tuple[Color, ...] = ((35, 35, 35), (70, 70, 75), (50, 60, 45), (120, 120, 125))


@dataclass(frozen=True)
class Cuboid:
    """An axis-aligned box: x along the street, z away from the camera, y up."""

    x: tuple[float, float]
    z: tuple[float, float]
    y: tuple[float, float]
    color: Color
    in_box: bool = True

    def corners(self) -> np.ndarray:
        return np.array([(x, z, y) for x in self.x for z in self.z for y in self.y], np.float64)


@dataclass(frozen=True)
class Disc:
    """A disc facing the camera (a wheel, a head); ``ring`` draws only its rim."""

    centre: tuple[float, float, float]  # x, z, y
    radius: float
    color: Color
    ring: bool = False
    in_box: bool = True

    def corners(self) -> np.ndarray:
        x, z, y = self.centre
        r = self.radius
        return np.array([(x - r, z, y - r), (x + r, z, y + r)], np.float64)


@dataclass(frozen=True)
class Flat:
    """A filled polygon through 3-D points (a window, an umbrella panel, a bag)."""

    points: tuple[tuple[float, float, float], ...]
    color: Color
    in_box: bool = True

    def corners(self) -> np.ndarray:
        return np.array(self.points, np.float64)


Part = Cuboid | Disc | Flat


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(255, c * factor)) for c in color)  # type: ignore[return-value]


def _car(x: float, z: float, size: tuple[float, float, float], color: Color, van: bool) -> list[Part]:
    length, depth, height = size
    x0, x1, z0, z1 = x - length / 2, x + length / 2, z - depth / 2, z + depth / 2
    near = z0 - 0.01
    if van:
        body = Cuboid((x0, x1), (z0, z1), (0.3, height), color)
        glass = [
            Flat(
                ((x1 - 1.2, near, 1.3), (x1 - 0.2, near, 1.3), (x1 - 0.2, near, 1.9), (x1 - 1.2, near, 1.9)),
                GLASS,
            )
        ]
        parts: list[Part] = [body, *glass]
    else:
        body = Cuboid((x0, x1), (z0, z1), (0.3, 0.9), color)
        cx0, cx1 = x0 + 0.22 * length, x1 - 0.2 * length
        cabin = Cuboid((cx0, cx1), (z0 + 0.1, z1 - 0.1), (0.9, height), _shade(color, 0.9))
        mid = (cx0 + cx1) / 2
        wnear = z0 + 0.09
        glass = [
            Flat(
                (
                    (cx0 + 0.1, wnear, 0.95),
                    (mid - 0.05, wnear, 0.95),
                    (mid - 0.05, wnear, height - 0.08),
                    (cx0 + 0.25, wnear, height - 0.08),
                ),
                GLASS,
            ),
            Flat(
                (
                    (mid + 0.05, wnear, 0.95),
                    (cx1 - 0.1, wnear, 0.95),
                    (cx1 - 0.25, wnear, height - 0.08),
                    (mid + 0.05, wnear, height - 0.08),
                ),
                GLASS,
            ),
        ]
        parts = [body, cabin, *glass]
    for wx in (x0 + 0.18 * length, x1 - 0.18 * length):
        parts += [
            Disc((wx, near - 0.01, 0.32), 0.32, TYRE),
            Disc((wx, near - 0.02, 0.32), 0.14, (150, 150, 150)),
        ]
    parts += [
        Cuboid((x1 - 0.05, x1), (z0, z0 + 0.3), (0.6, 0.75), (160, 230, 245)),
        Cuboid((x0, x0 + 0.05), (z0, z0 + 0.3), (0.6, 0.75), (30, 30, 200)),
    ]
    return parts


def _two_wheeler(
    x: float, z: float, size: tuple[float, float, float], color: Color, bicycle: bool
) -> list[Part]:
    length, _, height = size
    r = 0.33 if bicycle else 0.25
    back, front = x - length / 2 + r, x + length / 2 - r
    parts: list[Part] = [
        Disc((back, z, r), r, TYRE, ring=bicycle),
        Disc((front, z, r), r, TYRE, ring=bicycle),
    ]
    if bicycle:
        frame = ((back, z, r), (x, z, r + 0.05), (front - 0.05, z, 0.85), (back + 0.25, z, 0.8))
        parts += [
            Flat(frame, color),
            Cuboid((back + 0.15, back + 0.4), (z - 0.05, z + 0.05), (0.85, 0.9), TYRE),
        ]
    else:
        parts += [
            Cuboid((back - 0.1, front - 0.25), (z - 0.15, z + 0.15), (0.25, 0.6), color),
            Cuboid((back, x + 0.1), (z - 0.16, z + 0.16), (0.6, 0.72), TYRE),
        ]
    parts.append(Cuboid((front - 0.12, front - 0.04), (z - 0.03, z + 0.03), (0.4, height), (90, 90, 90)))
    parts.append(Cuboid((front - 0.14, front - 0.02), (z - 0.3, z + 0.3), (height - 0.05, height), TYRE))
    return parts


def _person(x: float, z: float, size: tuple[float, float, float], color: Color, t: float) -> list[Part]:
    _, _, height = size
    swing = 0.12 * math.sin(t * 5.0 + x)
    legs = (40, 40, 50)
    return [
        Cuboid((x - 0.15 + swing, x - 0.03 + swing), (z - 0.08, z + 0.08), (0.0, 0.85), legs),
        Cuboid((x + 0.03 - swing, x + 0.15 - swing), (z - 0.08, z + 0.08), (0.0, 0.85), legs),
        Cuboid((x - 0.22, x + 0.22), (z - 0.15, z + 0.15), (0.85, height - 0.27), color),
        Disc((x, z - 0.16, height - 0.13), 0.13, SKIN),
    ]


def _table(x: float, z: float, size: tuple[float, float, float], color: Color) -> list[Part]:
    length, depth, height = size
    x0, x1, z0, z1 = x - length / 2, x + length / 2, z - depth / 2, z + depth / 2
    parts: list[Part] = [
        Cuboid((lx, lx + 0.06), (lz, lz + 0.06), (0.0, height - 0.06), (50, 50, 60))
        for lx in (x0 + 0.05, x1 - 0.11)
        for lz in (z0 + 0.05, z1 - 0.11)
    ]
    parts.append(Cuboid((x0, x1), (z0, z1), (height - 0.06, height), color))
    goods = ((30, 150, 230), (40, 200, 90), (40, 40, 220), (200, 160, 40))
    for i, tint in enumerate(goods):
        gx = x0 + 0.12 + i * (length - 0.24) / len(goods)
        parts.append(Cuboid((gx, gx + 0.22), (z - 0.15, z + 0.1), (height, height + 0.12 + 0.04 * i), tint))
    return parts


def _umbrella(x: float, z: float, size: tuple[float, float, float], color: Color) -> list[Part]:
    radius, top = size[0] / 2, size[2]
    rim = top - 0.45
    parts: list[Part] = [
        Cuboid((x - 0.03, x + 0.03), (z - 0.03, z + 0.03), (0.0, rim + 0.1), (200, 200, 200))
    ]
    ring = [
        (x + radius * math.cos(a), z + radius * math.sin(a), rim) for a in np.linspace(0, 2 * math.pi, 13)
    ]
    # Panels furthest from the camera first, so the near ones cover them.
    panels = sorted(range(12), key=lambda i: -(ring[i][1] + ring[i + 1][1]))
    for i in panels:
        tint = color if i % 2 == 0 else (235, 235, 235)
        parts.append(Flat(((x, z, top), ring[i], ring[i + 1]), tint))
    return parts


BAG_SPOTS = tuple(
    (0.75 * math.cos(a) * (1 + 0.2 * (i % 3)), 0.55 * math.sin(a))
    for i, a in enumerate(np.linspace(-math.pi * 0.9, math.pi * 0.9, 12))
)


def _bin(actor: Actor, x: float, z: float, t: float) -> list[Part]:
    length, depth, height = actor.size
    x0, x1, z0, z1 = x - length / 2, x + length / 2, z - depth / 2, z + depth / 2
    level = actor.fill_at(t)
    behind: list[Part] = []
    in_front: list[Part] = []
    bags = int(max(0.0, level - 1.0) * len(BAG_SPOTS))
    for i, (dx, dz) in enumerate(BAG_SPOTS[:bags]):
        r = 0.22 + 0.05 * (i % 2)
        bag = Disc((x + dx * 1.3, z + dz * 1.2, r * 0.8), r, RUBBISH[i % len(RUBBISH)], in_box=False)
        (behind if dz > 0 else in_front).append(bag)
    parts: list[Part] = [
        *behind,
        Cuboid((x0, x1), (z0, z1), (0.0, height - 0.1), actor.color),
        Cuboid(
            (x0 - 0.03, x1 + 0.03), (z0 - 0.03, z1 + 0.03), (height - 0.1, height), _shade(actor.color, 0.7)
        ),
    ]
    if level > 0.85:
        pile = min(0.45, (level - 0.85) * 0.6)
        parts.append(
            Flat(
                ((x0 + 0.05, z0, height), (x1 - 0.05, z0, height), (x + 0.1, z0, height + pile)),
                RUBBISH[0],
                in_box=False,
            )
        )
    return parts + in_front


def sprite_parts(actor: Actor, x: float, z: float, t: float) -> list[Part]:
    """The parts of ``actor`` standing at (x, z) at time ``t``."""
    size, color = actor.size, actor.color
    if actor.sprite in ("car", "van"):
        return _car(x, z, size, color, van=actor.sprite == "van")
    if actor.sprite in ("scooter", "bicycle"):
        return _two_wheeler(x, z, size, color, bicycle=actor.sprite == "bicycle")
    if actor.sprite == "person":
        return _person(x, z, size, color, t)
    if actor.sprite == "table":
        return _table(x, z, size, color)
    if actor.sprite == "umbrella":
        return _umbrella(x, z, size, color)
    if actor.sprite == "bin":
        return _bin(actor, x, z, t)
    raise ValueError(f"unknown sprite {actor.sprite!r}")


def parts_box(camera: Camera, parts: list[Part]) -> tuple[float, float, float, float] | None:
    """The pixel box of the parts that belong to the object (unclipped)."""
    boxed = [part.corners() for part in parts if part.in_box]
    if not boxed:
        return None
    pixels = camera.project_many(np.concatenate(boxed))
    (u0, v0), (u1, v1) = pixels.min(axis=0), pixels.max(axis=0)
    return float(u0), float(v0), float(u1), float(v1)


def _poly(camera: Camera, points: np.ndarray) -> np.ndarray:
    return np.round(camera.project_many(points)).astype(np.int32)


def _draw_cuboid(image: np.ndarray, camera: Camera, part: Cuboid) -> None:
    (x0, x1), (z0, z1), (y0, y1) = part.x, part.z, part.y
    faces: list[tuple[list[tuple[float, float, float]], float]] = []
    # The end facing the camera's axis is visible; the top is visible from the camera's height.
    if x0 > 0:
        faces.append(([(x0, z0, y0), (x0, z1, y0), (x0, z1, y1), (x0, z0, y1)], 0.72))
    elif x1 < 0:
        faces.append(([(x1, z0, y0), (x1, z1, y0), (x1, z1, y1), (x1, z0, y1)], 0.72))
    if y1 < CAM_HEIGHT_M:
        faces.append(([(x0, z0, y1), (x1, z0, y1), (x1, z1, y1), (x0, z1, y1)], 1.18))
    faces.append(([(x0, z0, y0), (x1, z0, y0), (x1, z0, y1), (x0, z0, y1)], 1.0))
    for points, factor in faces:
        cv2.fillConvexPoly(image, _poly(camera, np.array(points)), _shade(part.color, factor), cv2.LINE_AA)


def draw_parts(image: np.ndarray, camera: Camera, parts: list[Part]) -> None:
    """Draw parts in list order (each sprite lists its far parts first)."""
    sx, sy = camera.scale
    for part in parts:
        if isinstance(part, Cuboid):
            _draw_cuboid(image, camera, part)
        elif isinstance(part, Disc):
            x, z, y = part.centre
            u, v = camera.project(x, z, y)
            axes = (
                max(1, round(part.radius * FOCAL_PX / z * sx)),
                max(1, round(part.radius * FOCAL_PX / z * sy)),
            )
            thickness = max(1, round(axes[0] * 0.25)) if part.ring else -1
            cv2.ellipse(image, (round(u), round(v)), axes, 0, 0, 360, part.color, thickness, cv2.LINE_AA)
        else:
            cv2.fillPoly(image, [_poly(camera, part.corners())], part.color, cv2.LINE_AA)


def footprint(actor: Actor, x: float, z: float) -> tuple[float, float, float, float, float]:
    """Ground rectangle (x0, x1, z0, z1) and height of the actor, for its shadow."""
    length, depth, height = actor.size
    return x - length / 2, x + length / 2, z - depth / 2, z + depth / 2, height
