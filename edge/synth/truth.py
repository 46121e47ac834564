"""Ground truth of a scene: every object's box per frame and every violation episode.

The truth comes from the script and the sprites' geometry, not from the pixels, so it is exact
and can be computed without rendering. Schema ``curbwatch.synth.v1`` (one JSON document):
``frames[i].boxes`` hold ``{track_id, label, xyxy}`` in pixels of ``frame_wh``, clipped to the
frame; ``episodes`` hold the stays at least as long as their zone's dwell (``kind`` is the
violation, ``start_frame``/``end_frame`` the first and last frame of the stay, ``flag_t`` when a
perfect edge would flag it); ``non_violations`` hold the shorter stays (brief stops).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import cv2
import numpy as np

from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.render import Placed, place_actors
from curbwatch.edge.synth.script import CLASSES, Scenario, Stay
from curbwatch.edge.synth.sprites import parts_box
from curbwatch.schema.zones import ZoneFile

TRUTH_SCHEMA = "curbwatch.synth.v1"
MIN_BOX_PX = 2.0
ZONE_COLOURS = {"no_parking": (0, 200, 255), "no_vending": (255, 120, 0), "bin_site": (0, 200, 0)}


def frame_boxes(camera: Camera, placed: list[Placed]) -> list[dict[str, Any]]:
    """Boxes of the placed actors, clipped to the frame; objects almost out of view are left out."""
    width, height = camera.frame_wh
    boxes = []
    for item in placed:
        found = parts_box(camera, item.parts)
        if found is None:
            continue
        x1, y1 = max(0.0, found[0]), max(0.0, found[1])
        x2, y2 = min(float(width), found[2]), min(float(height), found[3])
        if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
            continue
        xyxy = [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]
        boxes.append({"track_id": item.actor.track_id, "label": item.actor.label, "xyxy": xyxy})
    return sorted(boxes, key=lambda b: b["track_id"])


def _bin_states(scenario: Scenario, t: float) -> list[dict[str, Any]]:
    return [
        {"track_id": a.track_id, "fill": round(a.fill_at(t), 3), "overflowing": a.fill_at(t) >= 1.0}
        for a in scenario.actors
        if a.fill and a.pose(t) is not None
    ]


def _stay_record(scenario: Scenario, stay: Stay, start_ts: float, number: int) -> dict[str, Any]:
    fps = scenario.fps
    last_t = (scenario.frame_count - 1) / fps
    dwell = scenario.dwell_of(stay.zone)
    return {
        "id": f"ep-{number}",
        "kind": stay.violation.value,
        "zone": stay.zone,
        "what": stay.what,
        "track_ids": list(stay.track_ids),
        "start_frame": math.ceil(stay.start_t * fps - 1e-9),
        "end_frame": math.floor(stay.end_t * fps + 1e-9),
        "start_t": round(stay.start_t, 3),
        "end_t": round(stay.end_t, 3),
        "start_ts": round(start_ts + stay.start_t, 3),
        "end_ts": round(start_ts + stay.end_t, 3),
        "duration_s": round(stay.end_t - stay.start_t, 3),
        "min_dwell_s": dwell,
        "flag_t": round(stay.start_t + dwell, 3),
        "open_at_end": stay.end_t >= last_t - 1e-9,
    }


def ground_truth(scenario: Scenario, camera: Camera, camera_id: str, start: datetime) -> dict[str, Any]:
    """The whole ground-truth document of a scene (no pixels rendered)."""
    start_ts = start.timestamp()
    frames = []
    for index in range(scenario.frame_count):
        t = index / scenario.fps
        frames.append(
            {
                "index": index,
                "t": round(t, 3),
                "boxes": frame_boxes(camera, place_actors(scenario, t)),
                "bins": _bin_states(scenario, t),
            }
        )
    episodes, brief = [], []
    for stay in scenario.stays:
        dwell = scenario.dwell_of(stay.zone)
        target = episodes if stay.end_t - stay.start_t >= dwell else brief
        target.append(_stay_record(scenario, stay, start_ts, len(episodes) + len(brief) + 1))
    return {
        "schema": TRUTH_SCHEMA,
        "seed": scenario.seed,
        "seconds": scenario.seconds,
        "fps": scenario.fps,
        "frame_wh": list(camera.frame_wh),
        "camera": camera_id,
        "start_time": start.isoformat(),
        "start_ts": start_ts,
        "classes": list(CLASSES),
        "actors": [
            {
                "track_id": a.track_id,
                "label": a.label,
                "sprite": a.sprite,
                "first_t": a.keys[0].t,
                "last_t": a.keys[-1].t,
            }
            for a in scenario.actors
        ],
        "frames": frames,
        "episodes": sorted(episodes, key=lambda e: e["start_t"]),
        "non_violations": brief,
    }


def preview_index(truth: dict[str, Any]) -> int:
    """The frame that shows the most episodes at once (then the most boxes): the one to annotate."""

    def score(frame: dict[str, Any]) -> tuple[int, int]:
        index = frame["index"]
        active = sum(e["start_frame"] <= index <= e["end_frame"] for e in truth["episodes"])
        return active, len(frame["boxes"])

    return max(truth["frames"], key=score)["index"] if truth["frames"] else 0


def annotate(image: np.ndarray, truth: dict[str, Any], index: int, zones: ZoneFile) -> np.ndarray:
    """The frame with the zone outlines and its ground-truth boxes (episode objects in red)."""
    out = image.copy()
    scale = max(0.35, image.shape[1] / 1280 * 0.6)
    thick = max(1, round(image.shape[1] / 640))
    for zone in zones.zones:
        points = np.round(np.array(zone.polygon)).astype(np.int32)
        colour = ZONE_COLOURS.get(zone.kind, (200, 200, 200))
        cv2.polylines(out, [points], True, colour, thick, cv2.LINE_AA)
        cv2.putText(
            out, zone.name, tuple(points[0] + [4, 16]), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick
        )
    offenders = {
        tid
        for e in truth["episodes"]
        if e["start_frame"] <= index <= e["end_frame"]
        for tid in e["track_ids"]
    }
    for item in truth["frames"][index]["boxes"]:
        x1, y1, x2, y2 = (round(v) for v in item["xyxy"])
        colour = (0, 0, 255) if item["track_id"] in offenders else (255, 255, 255)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = f"{item['label']} #{item['track_id']}"
        cv2.putText(out, text, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick)
    return out
