"""Tests of the scene generator, and of the edge rules on its ground truth."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from curbwatch.edge.synth.generate import DEFAULT_START
from curbwatch.edge.synth.layout import Camera, zone_file
from curbwatch.edge.synth.script import plan_scenario
from curbwatch.edge.synth.truth import ground_truth
from curbwatch.schema.detlog import LoggedDetection, LoggedFrame
from curbwatch.schema.zones import ZoneFile

START = datetime.fromisoformat(DEFAULT_START)


def truth_of(
    seconds: float, seed: int, frame_wh: tuple[int, int] = (1280, 720)
) -> tuple[dict[str, Any], ZoneFile]:
    """The ground truth and zone file of a seeded scene, without rendering it."""
    scenario = plan_scenario(seconds, seed)
    camera = Camera(frame_wh)
    return ground_truth(scenario, camera, "cam", START), zone_file(
        camera, "cam", scenario.dwells, "Asia/Shanghai"
    )


def truth_log(truth: dict[str, Any], zones: ZoneFile) -> list[LoggedFrame]:
    """The ground-truth boxes as a detection log: a perfect detector, every frame inferred."""
    return [
        LoggedFrame(
            camera=zones.camera,
            ts=truth["start_ts"] + frame["t"],
            frame_wh=zones.frame_wh,
            detections=[
                LoggedDetection(label=b["label"], score=0.9, xyxy=tuple(b["xyxy"])) for b in frame["boxes"]
            ],
        )
        for frame in truth["frames"]
    ]
