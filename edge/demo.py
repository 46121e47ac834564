"""The demo edge box: one device with two cameras on generated streets (``curbwatch synth``).

Seeds 1 and 2 of the scene generator are the demo's streets (other seeds train the detector, so
the demo never shows it a scene it learned from). Each street is rendered once to a video with
its ground truth and its zone file, cached under the work folder and reused while the generator's
code and the demo's scene settings are unchanged. The real edge pipeline watches both videos with
the demo detector, ``street-demo@1`` from the model registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from curbwatch.edge import synth
from curbwatch.edge.app import run_edge
from curbwatch.edge.config import EdgeConfig, edge_config_from_dict

logger = logging.getLogger(__name__)

DEMO_MODEL = "street-demo@1"
DEMO_DEVICE = "edge-demo"
DEMO_SEEDS = (1, 2)
# Where the demo's cameras stand (two streets in central Shanghai, the demo city's calendar and
# grid): their cases get a grid cell and Open311 reports a position.
DEMO_LOCATIONS = {1: (31.2304, 121.4737), 2: (31.2243, 121.4690)}
DEMO_SECONDS = 120.0
DEMO_FPS = 5.0
DEMO_WH = (960, 540)
STREET_PREFIX = "street-"


@dataclass(frozen=True)
class DemoStreet:
    """One rendered demo street: its camera id and the files ``curbwatch synth`` wrote."""

    camera_id: str
    video: Path
    truth: Path
    zones: Path


def demo_street(folder: Path, seed: int) -> DemoStreet:
    """Where the street of ``seed`` is (or will be) rendered; the camera id is the file stem."""
    prefix = folder / f"{STREET_PREFIX}{seed}"
    return DemoStreet(
        prefix.name, prefix.with_suffix(".mp4"), prefix.with_suffix(".json"), prefix.with_suffix(".yaml")
    )


def render_stamp(seed: int) -> str:
    """What a render of ``seed`` depends on: the scene settings and the generator's code (a sha256)."""
    digest = hashlib.sha256(repr((seed, DEMO_SECONDS, DEMO_FPS, DEMO_WH, DEMO_LOCATIONS[seed])).encode())
    for source in sorted(Path(synth.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def render_demo_streets(folder: Path, *, progress: bool = True) -> list[DemoStreet]:
    """Render the demo streets that are missing or stale (both at once), and return all of them.

    Args:
        folder: Where the videos, truths and zone files go (with a stamp per street).
        progress: Show a progress bar per street being rendered.
    """
    from curbwatch.edge.synth.generate import synthesize

    def render(seed: int) -> DemoStreet:
        street = demo_street(folder, seed)
        stamp = street.video.with_suffix(".stamp")
        expected = render_stamp(seed)
        if stamp.is_file() and stamp.read_text(encoding="utf-8") == expected and street.video.is_file():
            return street
        logger.info("rendering demo street %s (seed %d)", street.camera_id, seed)
        stamp.unlink(missing_ok=True)
        synthesize(
            street.video.with_suffix(""),
            seconds=DEMO_SECONDS,
            seed=seed,
            fps=DEMO_FPS,
            frame_wh=DEMO_WH,
            location=DEMO_LOCATIONS[seed],
            progress=progress,
        )
        stamp.write_text(expected, encoding="utf-8")
        return street

    folder.mkdir(parents=True, exist_ok=True)
    # OpenCV drawing and encoding release the GIL, so the streets render side by side. A thread
    # cannot be cut short: after Ctrl-C the program ends when the streets in hand are finished (a
    # street left unfinished by a crash has no stamp, so it renders again next time).
    with ThreadPoolExecutor(len(DEMO_SEEDS), thread_name_prefix="render") as pool:
        try:
            return list(pool.map(render, DEMO_SEEDS))
        except KeyboardInterrupt:
            logger.warning("stopping after the streets being rendered are written (under a minute)")
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def demo_model_path(model: str | Path = DEMO_MODEL) -> Path:
    """The ONNX file of the demo detector (a registry reference or a path).

    Raises:
        RegistryError: The reference is not registered, or its file is not on this machine.
    """
    from curbwatch.training.registry import Registry, RegistryError, resolve_model_path

    path = resolve_model_path(model, Registry())
    if not path.is_file():
        raise RegistryError(f"the demo detector {model} should be at {path}, but that file is missing")
    return path


def demo_edge_config(
    workdir: Path,
    streets: list[DemoStreet],
    *,
    start_time: str,
    realtime: bool,
    model: str | Path = DEMO_MODEL,
    delivery: dict[str, Any] | None = None,
) -> EdgeConfig:
    """The demo edge box: one camera per street, with the street's own zone file.

    Args:
        workdir: Where events, evidence, the detection logs and the outbox go.
        streets: The rendered streets.
        start_time: Wall time of the videos' first frame, ISO 8601 (frame timestamps count from it).
        realtime: Pace the videos at their frame rate, as live cameras would arrive.
        model: The detector, a registry reference or an ONNX path.
        delivery: An ``edge.yaml`` ``delivery`` section to send events to a server.
    """
    document: dict[str, Any] = {
        "version": 1,
        "device_id": DEMO_DEVICE,
        "detector": {"model_path": str(demo_model_path(model))},
        "evidence": {"root": str(workdir / "evidence")},
        "output": {"events": str(workdir / "events.jsonl"), "detlog_dir": str(workdir / "detlog")},
        "cameras": [
            {
                "id": street.camera_id,
                "source": {"url": str(street.video), "start_time": start_time, "realtime": realtime},
                "zones": str(street.zones),
            }
            for street in streets
        ],
    }
    if delivery is not None:
        document["delivery"] = delivery
    return edge_config_from_dict(document, base_dir=workdir)


def run_demo(workdir: Path, *, start_time: str, model: str | Path = DEMO_MODEL) -> int:
    """The edge alone on the demo streets, as fast as it goes; prints the events, returns how many."""
    console = Console(stderr=True)
    model_path = demo_model_path(model)  # a missing model fails before the streets are rendered
    streets = render_demo_streets(workdir / "streets")
    events_path = workdir / "events.jsonl"
    events_path.unlink(missing_ok=True)
    config = demo_edge_config(workdir, streets, start_time=start_time, realtime=False, model=model_path)
    console.print(f"[bold]curbwatch demo[/]: {len(streets)} cameras, {DEMO_SECONDS:.0f} s of street each")
    reports = run_edge(config)
    lines = events_path.read_text(encoding="utf-8").splitlines() if events_path.exists() else []
    for line in lines:
        print(line)
    for line in lines:
        event = json.loads(line)
        when = datetime.fromisoformat(event["ts"]).astimezone().strftime("%H:%M:%S")
        console.print(
            f"{when} {event['camera_id']} [bold]{event['type']:6}[/] {event['event_code']} "
            f"{event['violation']} in {event['zone']} dwell {event['dwell_s']:.0f}s"
        )
    for report in reports.values():
        stats = report.stats
        failure = f" ({report.error})" if report.error else ""
        console.print(
            f"camera {report.camera_id}: {report.outcome}{failure}, {stats.frames} frames, "
            f"{stats.inferred_share:.0%} reached the detector, {stats.events} events"
        )
    console.print(f"events: {events_path}\nevidence: {workdir / 'evidence'}")
    return len(lines)
