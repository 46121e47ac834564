"""``curbwatch demo``: a street video rendered from a real CCTV still, watched by the real edge.

The still (a doorway camera looking across a street, with a car at the far kerb) becomes a
5 fps 1280x720 video with camera noise, slow light drift and a passing cyclist-sized blob, so
the motion gate, the real YOLOX detector, the tracker, the zones and the parking rule all run
as on a live camera. The car is already parked when the "camera" starts, which is the case
Frigate-style alerting misses.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from tqdm import tqdm

from curbwatch.edge.app import REPO_ROOT, default_model_path, run_edge, shared_data_dir
from curbwatch.edge.config import EdgeConfig, edge_config_from_dict

logger = logging.getLogger(__name__)

DEMO_FPS = 5.0
DEMO_WH = (1280, 720)
DEMO_START = "2026-11-27T09:00:00+08:00"
DEMO_ZONES = REPO_ROOT / "zones" / "demo-kerb.yaml"


def render_street_video(
    still: Path, out: Path, seconds: float, seed: int = 7, passers_by: bool = True
) -> Path:
    """Write a noisy, gently lit-changing video of ``still``, with a blob crossing now and then."""
    image = cv2.imread(str(still))
    if image is None:
        raise FileNotFoundError(f"cannot read the demo still {still}")
    base = cv2.resize(image, DEMO_WH, interpolation=cv2.INTER_AREA).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), DEMO_FPS, DEMO_WH)
    if not writer.isOpened():
        raise OSError(f"cannot write {out}")
    rng = np.random.default_rng(seed)
    frames = int(seconds * DEMO_FPS)
    try:
        for index in tqdm(range(frames), desc="rendering demo street", unit="frame"):
            t = index / DEMO_FPS
            light = 1.0 + 0.04 * np.sin(2 * np.pi * t / 90.0)
            frame = base * light + rng.normal(0.0, 3.0, base.shape).astype(np.float32)
            if passers_by:
                _draw_passer_by(frame, t)
            writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    finally:
        writer.release()
    return out


def _draw_passer_by(frame: np.ndarray, t: float) -> None:
    # A dark blob rides along the near lane for 6 s of every 30 s: motion the gate must notice.
    phase = t % 30.0
    if phase > 6.0:
        return
    x = int(40 + phase / 6.0 * 1180)
    cv2.rectangle(frame, (x, 540), (x + 60, 600), (40, 40, 60), thickness=-1)


def demo_edge_config(
    workdir: Path,
    video: Path,
    *,
    start_time: str = DEMO_START,
    realtime: bool = False,
    delivery: dict[str, Any] | None = None,
) -> EdgeConfig:
    """The demo edge box: one camera on ``video`` with the demo kerb zones, the real detector.

    Args:
        workdir: Where events, evidence, the detection log and the outbox go.
        video: The rendered street.
        start_time: Wall time of the video's first frame (frame timestamps count from it).
        realtime: Pace the video at its frame rate, as a live camera would arrive.
        delivery: An ``edge.yaml`` ``delivery`` section to send events to a server.
    """
    document: dict[str, Any] = {
        "version": 1,
        "device_id": "edge-demo",
        "detector": {"model_path": str(default_model_path())},
        "evidence": {"root": str(workdir / "evidence")},
        "output": {"events": str(workdir / "events.jsonl"), "detlog_dir": str(workdir / "detlog")},
        "cameras": [
            {
                "id": "demo-kerb",
                "source": {"url": str(video), "start_time": start_time, "realtime": realtime},
                "zones": str(DEMO_ZONES),
            }
        ],
    }
    if delivery is not None:
        document["delivery"] = delivery
    return edge_config_from_dict(document, base_dir=Path.cwd())


def demo_still() -> Path:
    """The real CCTV still the demo street is rendered from."""
    return shared_data_dir() / "frigate-cctv" / "ground-plane.jpg"


def run_demo(workdir: Path, seconds: float) -> int:
    """Render the video, run the edge on it and print the events; returns the number of events."""
    console = Console(stderr=True)
    video = render_street_video(demo_still(), workdir / "street.mp4", seconds)
    events_path = workdir / "events.jsonl"
    events_path.unlink(missing_ok=True)
    config = demo_edge_config(workdir, video)
    console.print(f"[bold]curbwatch demo[/]: watching {video} ({seconds:.0f} s of scene time)")
    reports = run_edge(config)
    lines = events_path.read_text(encoding="utf-8").splitlines() if events_path.exists() else []
    for line in lines:
        print(line)
    for line in lines:
        event = json.loads(line)
        when = datetime.fromisoformat(event["ts"]).astimezone().strftime("%H:%M:%S")
        annotated = next((e["path"] for e in event["evidence"] if e["role"] == "annotated"), "-")
        console.print(
            f"{when} [bold]{event['type']:6}[/] {event['event_code']} {event['violation']} in "
            f"{event['zone']} dwell {event['dwell_s']:.0f}s  evidence: {annotated}"
        )
    for report in reports.values():
        stats = report.stats
        failure = f" ({report.error})" if report.error else ""
        console.print(
            f"camera {report.camera_id}: {report.outcome}{failure}, {stats.frames} frames, "
            f"{stats.inferred_share:.0%} reached the detector, {stats.events} events"
        )
    console.print(
        f"events: {events_path}\nevidence: {workdir / 'evidence'}\ndetection log: {workdir / 'detlog'}"
    )
    return len(lines)
