"""``curbwatch synth``: plan a scene, write its video, ground truth, zone file and a preview."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
from tqdm import tqdm

from curbwatch.edge.synth.layout import Camera, zone_document
from curbwatch.edge.synth.render import render_frames
from curbwatch.edge.synth.script import plan_scenario
from curbwatch.edge.synth.truth import annotate, ground_truth, preview_index
from curbwatch.schema.yamlio import dump_yaml
from curbwatch.schema.zones import ZoneFile

DEFAULT_START = "2026-11-25T09:00:00+08:00"
DEFAULT_TIMEZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class SynthOutputs:
    """The files one scene was written to."""

    video: Path
    truth: Path
    zones: Path
    preview: Path
    episodes: int


def camera_id_for(out: Path) -> str:
    """A valid camera id from the output name (``build/synth/street1`` -> ``street1``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", out.name).lstrip("_.-")
    return name[:64] or "synth"


def synthesize(
    out: Path,
    *,
    seconds: float = 120.0,
    seed: int = 0,
    fps: float = 5.0,
    frame_wh: tuple[int, int] = (1280, 720),
    start_time: str = DEFAULT_START,
    location: tuple[float, float] | None = None,
    progress: bool = True,
) -> SynthOutputs:
    """Render one seeded scene to ``out``.mp4 with ``out``.json (truth), ``out``.yaml and ``out``.png.

    Args:
        out: Path prefix of the outputs; its folder is created.
        seconds: Scene length.
        seed: Everything random (timings, colours, traffic, light, noise) follows from it.
        fps: Frame rate of the video.
        frame_wh: Frame width and height.
        start_time: ISO wall time of the first frame (with its UTC offset); timestamps count from it.
        location: The camera's (latitude, longitude) for the zone file; none by default.
        progress: Show a progress bar.
    """
    if min(frame_wh) < 16:
        raise ValueError(f"frame size {frame_wh} is too small")
    start = datetime.fromisoformat(start_time)
    if start.tzinfo is None:
        raise ValueError(f"start time {start_time!r} needs a UTC offset, e.g. +08:00")
    scenario = plan_scenario(seconds, seed, fps)
    camera = Camera(frame_wh)
    camera_id = camera_id_for(out)
    document = zone_document(camera, camera_id, scenario.dwells, DEFAULT_TIMEZONE, location)
    zones = ZoneFile.model_validate(document)
    truth = ground_truth(scenario, camera, camera_id, start)
    paths = SynthOutputs(
        out.with_suffix(".mp4"),
        out.with_suffix(".json"),
        out.with_suffix(".yaml"),
        out.with_suffix(".png"),
        len(truth["episodes"]),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    paths.zones.write_text(dump_yaml(document), encoding="utf-8")
    paths.truth.write_text(json.dumps(truth, separators=(",", ":")), encoding="utf-8")
    chosen = preview_index(truth)
    writer = cv2.VideoWriter(str(paths.video), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame_wh)
    if not writer.isOpened():
        raise OSError(f"cannot write {paths.video}")
    try:
        frames = render_frames(scenario, camera)
        for index, frame, _ in tqdm(
            frames, total=scenario.frame_count, desc="rendering", unit="frame", disable=not progress
        ):
            writer.write(frame)
            if index == chosen:
                cv2.imwrite(str(paths.preview), annotate(frame, truth, index, zones))
    finally:
        writer.release()
    return paths
