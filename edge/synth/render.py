"""Pixels of the scene: the street background, shadows, sprites, light and camera noise."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from curbwatch.edge.synth import layout
from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.script import Actor, Lighting, Scenario
from curbwatch.edge.synth.sprites import Part, draw_parts, footprint, sprite_parts

NOISE_SIGMA = 3.0
SHADOW_STRENGTH = 0.45
FACADES = (
    (150, 170, 190),
    (120, 140, 170),
    (175, 175, 160),
    (110, 120, 130),
    (160, 150, 200),
    (140, 160, 140),
)


@dataclass(frozen=True)
class Placed:
    """One actor at one moment: where it stands and its parts."""

    actor: Actor
    x: float
    z: float
    parts: list[Part]


def place_actors(scenario: Scenario, t: float) -> list[Placed]:
    """The actors in the scene at ``t``, furthest first (drawing order)."""
    placed = []
    for actor in scenario.actors:
        pose = actor.pose(t)
        if pose is not None:
            x, z = pose
            placed.append(Placed(actor, x, z, sprite_parts(actor, x, z, t)))
    placed.sort(key=lambda p: (-(p.z - p.actor.size[1] / 2), p.actor.track_id))
    return placed


def _band(
    image: np.ndarray, camera: Camera, z_range: tuple[float, float], color: tuple[int, int, int]
) -> None:
    reach = camera.visible_half_width(max(z_range)) + 2.0
    cv2.fillConvexPoly(image, camera.ground_polygon((-reach, reach), z_range), color)


def _facades(image: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    z = layout.FACADE_Z
    reach = camera.visible_half_width(z) + 2.0
    x = -reach
    while x < reach:
        width = float(rng.uniform(4.0, 7.0))
        color = FACADES[int(rng.integers(len(FACADES)))]
        top = camera.px(x, z, 30.0)
        cv2.rectangle(image, top, camera.px(x + width, z, 0.0), color, -1)
        # A shop front with its sign, and rows of windows above.
        cv2.rectangle(image, camera.px(x + 0.4, z, 2.6), camera.px(x + width - 0.4, z, 0.0), (70, 60, 55), -1)
        sign = tuple(int(c) for c in rng.integers(40, 230, 3))
        cv2.rectangle(image, camera.px(x + 0.3, z, 3.3), camera.px(x + width - 0.3, z, 2.7), sign, -1)
        for floor in range(6):
            for wx in np.arange(x + 0.8, x + width - 1.0, 1.6):
                y = 4.5 + floor * 3.0
                cv2.rectangle(image, camera.px(wx, z, y + 1.5), camera.px(wx + 0.9, z, y), (90, 80, 70), -1)
        x += width


def background(camera: Camera, seed: int) -> np.ndarray:
    """The empty street at ``camera``'s size (façade colours vary with the seed)."""
    width, height = camera.frame_wh
    image = np.full((height, width, 3), (200, 190, 180), np.uint8)
    rng = np.random.default_rng(seed + 7919)
    _facades(image, camera, rng)
    _band(image, camera, (layout.FAR_KERB_Z, layout.FACADE_Z), (165, 168, 172))
    _band(image, camera, (layout.KERB_Z, layout.FAR_KERB_Z), (78, 78, 80))
    _band(image, camera, (layout.PAVEMENT_NEAR_Z - 1.0, layout.KERB_Z), (172, 178, 184))
    thin = max(1, round(2 * camera.scale[0]))
    reach = camera.visible_half_width(layout.FAR_KERB_Z) + 2.0
    for x in np.arange(-reach, reach, 3.0):  # dashed centre line
        cv2.fillConvexPoly(
            image,
            camera.ground_polygon((x, x + 1.5), (layout.CENTRE_LINE_Z - 0.06, layout.CENTRE_LINE_Z + 0.06)),
            (220, 220, 220),
        )
    yellow = (40, 200, 230)  # the kerb's no-parking line and the hatched strip
    _band(image, camera, (layout.KERB_Z + 0.08, layout.KERB_Z + 0.2), yellow)
    _band(image, camera, (layout.KERB_Z - 0.15, layout.KERB_Z), (200, 200, 200))  # kerb stones
    _band(image, camera, (layout.FAR_KERB_Z, layout.FAR_KERB_Z + 0.15), (200, 200, 200))
    near = layout.PAVEMENT_NEAR_Z - 1.0
    for z in np.arange(layout.KERB_Z - 0.6, near, -0.6):  # paving joints
        cv2.line(image, camera.px(-reach, z), camera.px(reach, z), (150, 155, 160), thin)
    for x in np.arange(-12.0, 12.0, 0.6):
        cv2.line(image, camera.px(x, near), camera.px(x, layout.KERB_Z - 0.15), (150, 155, 160), thin)
    cv2.polylines(
        image, [camera.ground_polygon(layout.BIKE_BAY_X, (7.2, 8.8))], True, (240, 240, 240), thin * 2
    )
    hatch = camera.ground_polygon(layout.HATCH_X, (6.9, 8.8))
    cv2.polylines(image, [hatch], True, yellow, thin * 2)
    x0, x1 = layout.HATCH_X
    for x in np.arange(x0, x1, 0.5):
        cv2.line(image, camera.px(x, 6.9), camera.px(min(x + 0.6, x1), 8.8), yellow, thin)
    return cv2.GaussianBlur(image, (3, 3), 0)


def light_at(lighting: Lighting, seconds: float, t: float) -> tuple[float, float, float]:
    """Brightness gain, shadow strength and sun direction (radians) at ``t``."""
    cloud = math.exp(-(((t - lighting.cloud_t) / (lighting.cloud_s / 2)) ** 2))
    drift = 1.0 + lighting.drift * math.sin(2 * math.pi * t / max(seconds, 1.0) * 1.3 + lighting.phase)
    share = t / max(seconds, 1.0)
    sun = lighting.sun_from + share * (lighting.sun_to - lighting.sun_from)
    return drift * (1.0 - 0.25 * cloud), SHADOW_STRENGTH * (1.0 - 0.8 * cloud), sun


def _shadows(camera: Camera, placed: list[Placed], sun: float) -> np.ndarray:
    width, height = camera.frame_wh
    mask = np.zeros((height, width), np.uint8)
    dx, dz = math.cos(sun) * 0.7, math.sin(sun) * 0.35
    for item in placed:
        x0, x1, z0, z1, tall = footprint(item.actor, item.x, item.z)
        corners = [(x0, z0), (x1, z0), (x1, z1), (x0, z1)]
        ground = corners + [(x + dx * tall, max(0.5, z + dz * tall)) for x, z in corners]
        points = np.array([camera.project(x, z) for x, z in ground], np.float32)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(points).astype(np.int32)), 255)
    size = max(3, round(9 * camera.scale[0]) | 1)
    return cv2.GaussianBlur(mask, (size, size), 0)


def render_frame(
    scenario: Scenario, camera: Camera, base: np.ndarray, t: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[Placed]]:
    """One video frame at ``t`` and the actors it shows."""
    gain, strength, sun = light_at(scenario.lighting, scenario.seconds, t)
    placed = place_actors(scenario, t)
    shade = 1.0 - (strength / 255.0) * _shadows(camera, placed, sun).astype(np.float32)
    canvas = (base.astype(np.float32) * shade[..., None]).astype(np.uint8)
    for item in placed:
        draw_parts(canvas, camera, item.parts)
    # Warmer light as it dims: blue falls a little faster than red.
    tint = np.array(
        [gain * (1.0 - 0.04 * (1.0 - gain)), gain, gain * (1.0 + 0.02 * (1.0 - gain))], np.float32
    )
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * NOISE_SIGMA
    frame = canvas.astype(np.float32) * tint + noise
    return np.clip(frame, 0, 255).astype(np.uint8), placed


def render_frames(scenario: Scenario, camera: Camera) -> Iterator[tuple[int, np.ndarray, list[Placed]]]:
    """Yield (index, BGR frame, placed actors) for every frame of the scene, reproducibly."""
    base = background(camera, scenario.seed)
    rng = np.random.default_rng([scenario.seed, 1])
    for index in range(scenario.frame_count):
        frame, placed = render_frame(scenario, camera, base, index / scenario.fps, rng)
        yield index, frame, placed
