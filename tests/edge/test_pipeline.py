"""One camera's pipeline with a fake detector: gating, zones swapped while running, stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curbwatch.edge.events import EventBuilder
from curbwatch.edge.messages import Detections, Frame
from curbwatch.edge.pipeline import CameraPipeline, PipelineParts
from curbwatch.schema.events import EndReason, EventType
from curbwatch.schema.zones import ZoneFile
from tests.factories import make_detections

CAR = (300.0, 200.0, 500.0, 300.0)  # anchor (400, 300)


def zone_file(polygon: list[list[float]], dwell: float) -> ZoneFile:
    return ZoneFile.model_validate({
        "version": 1, "camera": "cam", "frame_wh": [640, 480], "timezone": "UTC",
        "zones": [{"name": "kerb", "kind": "no_parking", "polygon": polygon, "min_dwell_s": dwell}],
    })  # fmt: skip


class CountingDetector:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> Detections:
        self.calls += 1
        return make_detections([CAR], scores=0.9, labels="car")


def frames(start: float, seconds: float, fps: float = 5.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = np.full((480, 640, 3), 90, np.uint8)
    for index in range(int(seconds * fps)):
        noise = rng.integers(0, 3, base.shape, dtype=np.uint8)
        yield Frame("cam", start + index / fps, base + noise, index)


def test_zones_replaced_while_running_keep_the_clock_of_the_parked_car(tmp_path: Path) -> None:
    first = zone_file([[250, 250], [550, 250], [550, 350], [250, 350]], dwell=60)
    detector = CountingDetector()
    pipeline = CameraPipeline(first, detector, EventBuilder("edge", first, model=None), PipelineParts())
    events = []
    stream = frames(1_000.0, 200)
    for frame in stream:
        events += pipeline.process(frame)
        if frame.ts >= 1_090:
            break
    assert [e.type for e in events] == [EventType.START]
    # A zone moved away from the car: the episode ends, no new one starts.
    pipeline.replace_zones(zone_file([[0, 400], [200, 400], [200, 470], [0, 470]], dwell=60))
    for frame in stream:
        events += pipeline.process(frame)
        if frame.ts >= 1_120:
            break
    assert [(e.type, e.end_reason) for e in events[1:]] == [(EventType.END, EndReason.ZONES_CHANGED)]
    # The zone comes back: like a schedule coming into force, its dwell counts from when it applies
    # (the car was not breaking that zone's rule before it existed); the track itself carried on.
    pipeline.replace_zones(zone_file([[250, 250], [550, 250], [550, 350], [250, 350]], dwell=40))
    for frame in stream:
        events += pipeline.process(frame)
        if frame.ts >= 1_170:
            break
    start = events[-1]
    assert start.type is EventType.START
    assert start.episode_start.timestamp() == pytest.approx(1_120.2, abs=0.5)
    assert start.objects[0].track_id == events[0].objects[0].track_id
    assert start.objects[0].stationary_s > 160
    # A static scene: warm-up, then one detector run per recheck interval.
    assert pipeline.stats.inferred_share < 0.15
    assert detector.calls == pipeline.stats.inferred_frames
