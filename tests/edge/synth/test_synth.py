"""The scene generator: reproducible, exact ground truth that agrees with its zones and scripts."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

import cv2
import pytest
import shapely
from shapely.geometry import Polygon

from curbwatch.edge.events import EventBuilder
from curbwatch.edge.pipeline import PipelineParts
from curbwatch.edge.replay import replay
from curbwatch.edge.synth.generate import synthesize
from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.render import render_frames
from curbwatch.edge.synth.script import plan_scenario
from curbwatch.schema.events import EventType, EventV1
from curbwatch.schema.zones import NoParkingZone, NoVendingZone, Violation, ZoneFile, load_zone_file
from tests.edge.synth import START, truth_log, truth_of

SMALL = (320, 180)
FLAG_TOLERANCE_S = 5.0  # edge flag time against the truth's start + dwell


@pytest.fixture(scope="module")
def default_scene() -> tuple[dict[str, Any], ZoneFile]:
    return truth_of(120.0, seed=3)


def first_frames_hash(seed: int, count: int = 3) -> str:
    scenario = plan_scenario(20.0, seed)
    digest = hashlib.sha256()
    for _, frame, _ in islice(render_frames(scenario, Camera(SMALL)), count):
        digest.update(frame.tobytes())
    return digest.hexdigest()


def test_same_seed_gives_identical_truth_and_frames() -> None:
    assert truth_of(30.0, 5, SMALL) == truth_of(30.0, 5, SMALL)
    assert first_frames_hash(5) == first_frames_hash(5)


def test_different_seed_gives_different_scene() -> None:
    assert truth_of(30.0, 5, SMALL)[0]["frames"] != truth_of(30.0, 6, SMALL)[0]["frames"]
    assert first_frames_hash(5) != first_frames_hash(6)


@pytest.mark.parametrize("frame_wh", [(1280, 720), SMALL, (640, 480)])
def test_boxes_lie_inside_the_frame(frame_wh: tuple[int, int]) -> None:
    truth, zones = truth_of(60.0, 1, frame_wh)
    width, height = frame_wh
    boxes = [box for frame in truth["frames"] for box in frame["boxes"]]
    assert boxes
    for box in boxes:
        x1, y1, x2, y2 = box["xyxy"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, box
    assert zones.frame_wh == frame_wh


@pytest.mark.parametrize("seconds", [10.0, 20.0, 120.0])
def test_episode_objects_stay_inside_their_zone(seconds: float) -> None:
    truth, zones = truth_of(seconds, seed=3, frame_wh=SMALL if seconds < 60 else (1280, 720))
    assert len(truth["episodes"]) == 4
    assert all(stay["duration_s"] > 0 for stay in truth["episodes"] + truth["non_violations"])
    polygons = {zone.name: Polygon(zone.polygon) for zone in zones.zones}
    for episode in truth["episodes"]:
        polygon = polygons[episode["zone"]]
        for index in range(episode["start_frame"], episode["end_frame"] + 1):
            boxes = {box["track_id"]: box["xyxy"] for box in truth["frames"][index]["boxes"]}
            for track_id in episode["track_ids"]:
                x1, _, x2, y2 = boxes[track_id]
                # The edge places an object by the bottom centre of its box.
                assert shapely.intersects_xy(polygon, (x1 + x2) / 2, y2), (episode["what"], index)


def test_zone_file_validates_and_matches_the_truth(tmp_path: Path) -> None:
    outputs = synthesize(tmp_path / "street", seconds=10.0, seed=2, frame_wh=SMALL, progress=False)
    zones = load_zone_file(outputs.zones)
    truth = json.loads(outputs.truth.read_text(encoding="utf-8"))
    assert zones.camera == truth["camera"] == "street"
    assert zones.frame_wh == tuple(truth["frame_wh"]) == SMALL
    assert {zone.kind for zone in zones.zones} == {"no_parking", "no_vending", "bin_site"}
    # The zones' class lists cover every label the scenes draw, as the rules need.
    kerb, pavement = (next(z for z in zones.zones if z.name == name) for name in ("kerb", "pavement"))
    assert isinstance(kerb, NoParkingZone) and isinstance(pavement, NoVendingZone)
    covered = {*kerb.vehicle_classes, *kerb.two_wheeler_classes, *pavement.person_classes}
    covered |= {*pavement.vending_classes, "bin"}  # bins are judged on pixels, by no class list
    assert set(truth["classes"]) <= covered


def test_default_scene_holds_every_situation(default_scene: tuple[dict[str, Any], ZoneFile]) -> None:
    truth, _ = default_scene
    kinds = sorted(episode["kind"] for episode in truth["episodes"])
    assert kinds == sorted(
        [
            Violation.ILLEGAL_PARKING,
            Violation.ILLEGAL_PARKING_TWO_WHEELER,
            Violation.UNLICENSED_VENDING,
            Violation.BIN_OVERFLOW,
        ]
    )
    (brief,) = truth["non_violations"]
    assert brief["kind"] == Violation.ILLEGAL_PARKING and brief["zone"] == "kerb"
    assert 0 < brief["duration_s"] < brief["min_dwell_s"]
    flagged = {track_id for episode in truth["episodes"] for track_id in episode["track_ids"]}
    assert not flagged & set(brief["track_ids"])
    labels = {actor["track_id"]: actor["label"] for actor in truth["actors"]}
    passing = [tid for tid, label in labels.items() if label in ("car", "truck") and tid not in flagged]
    assert len(passing) >= 10  # traffic both ways, plus the brief stop
    assert sum(label in ("motorcycle", "bicycle") for label in labels.values()) >= 3


def test_episodes_agree_with_the_script(default_scene: tuple[dict[str, Any], ZoneFile]) -> None:
    truth, zones = default_scene
    fps = truth["fps"]
    dwell = {zone.name: zone.min_dwell_s for zone in zones.zones if hasattr(zone, "min_dwell_s")}
    scenario = plan_scenario(120.0, 3)
    assert len(scenario.stays) == len(truth["episodes"]) + len(truth["non_violations"])
    for episode in truth["episodes"]:
        assert episode["min_dwell_s"] == dwell[episode["zone"]]
        assert episode["duration_s"] >= episode["min_dwell_s"]
        assert episode["flag_t"] == pytest.approx(episode["start_t"] + episode["min_dwell_s"])
        assert episode["start_frame"] / fps >= episode["start_t"] - 1e-6
        assert episode["end_frame"] / fps <= episode["end_t"] + 1e-6
        assert episode["end_ts"] - episode["start_ts"] == pytest.approx(episode["duration_s"], abs=1e-2)
        assert episode["start_ts"] == pytest.approx(START.timestamp() + episode["start_t"])
    parked = next(e for e in truth["episodes"] if e["kind"] == Violation.ILLEGAL_PARKING)
    assert not parked["open_at_end"] and parked["end_frame"] < len(truth["frames"]) - 1
    overflow = next(e for e in truth["episodes"] if e["kind"] == Violation.BIN_OVERFLOW)
    assert overflow["open_at_end"]
    for frame in truth["frames"]:
        (state,) = frame["bins"]
        in_episode = overflow["start_frame"] <= frame["index"] <= overflow["end_frame"]
        assert state["overflowing"] == in_episode


def test_short_render_is_fast_and_readable(tmp_path: Path) -> None:
    started = time.perf_counter()
    outputs = synthesize(tmp_path / "short", seconds=15.0, seed=4, frame_wh=SMALL, progress=False)
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, f"15 s of scene at 320x180 took {elapsed:.1f} s"
    capture = cv2.VideoCapture(str(outputs.video))
    try:
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 75
        ok, frame = capture.read()
    finally:
        capture.release()
    assert ok and frame.shape == (180, 320, 3)
    preview = cv2.imread(str(outputs.preview))
    assert preview is not None and preview.shape == (180, 320, 3)


def replay_truth(truth: dict[str, Any], zones: ZoneFile) -> dict[str, list[EventV1]]:
    """Feed the ground-truth boxes to the edge's tracker, zones and rules as a detection log."""
    episodes: dict[str, list[EventV1]] = defaultdict(list)
    for event in replay(
        truth_log(truth, zones), zones, PipelineParts(), EventBuilder("synth-test", zones, model=None)
    ):
        episodes[event.episode_id].append(event)
    return episodes


@pytest.mark.parametrize("seed", [0, 3])
def test_edge_rules_on_the_truth_find_each_episode_once(seed: int) -> None:
    truth, zones = truth_of(120.0, seed)
    found = replay_truth(truth, zones)
    # Bin sites need pixels, so a replay judges every rule but the bin rule.
    expected = [e for e in truth["episodes"] if e["kind"] != Violation.BIN_OVERFLOW]
    assert len(found) == len(expected)
    for episode in expected:
        (events,) = [
            v for v in found.values() if (v[0].zone, v[0].violation) == (episode["zone"], episode["kind"])
        ]
        assert events[0].type == EventType.START
        flagged_t = events[0].ts.timestamp() - truth["start_ts"]
        assert flagged_t == pytest.approx(episode["flag_t"], abs=FLAG_TOLERANCE_S)
    assert all(events[-1].type == EventType.END for events in found.values())
