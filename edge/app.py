"""What the ``curbwatch edge`` and ``curbwatch replay`` commands do, without the CLI plumbing."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from curbwatch.edge.config import EdgeConfig, edge_config_from_dict, load_edge_config
from curbwatch.edge.events import EventBuilder
from curbwatch.edge.pipeline import PipelineParts
from curbwatch.edge.replay import replay
from curbwatch.edge.rollout import model_store, startup_detector
from curbwatch.edge.runner import CameraReport, EdgeRunner
from curbwatch.edge.sinks import EventSink, JsonLinesSink, TeeSink
from curbwatch.edge.uplink import Uplink
from curbwatch.schema.detlog import open_detlog, read_detlog
from curbwatch.schema.zones import load_zone_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real test material: ``CURBWATCH_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("CURBWATCH_DATA", REPO_ROOT.parent / "shared" / "data"))


def default_model_path() -> Path:
    """The detector used when none is named: the real YOLOX-Nano COCO model."""
    return shared_data_dir() / "yolox-nano" / "yolox_nano.onnx"


def build_config(
    config: Path | None,
    *,
    source: str | None = None,
    zones: Path | None = None,
    model: Path | None = None,
    events: str | None = None,
    record: Path | None = None,
    evidence: Path | None = None,
) -> EdgeConfig:
    """The edge config from a file, or a one-camera config from command-line options."""
    if config is not None:
        if source or zones or model:
            raise ValueError("give either an edge.yaml or --source/--zones/--model, not both")
        loaded = load_edge_config(config)
    else:
        if source is None or zones is None:
            raise ValueError("without an edge.yaml, --source and --zones are required")
        camera_id = load_zone_file(zones).camera
        loaded = edge_config_from_dict(
            {
                "version": 1,
                "device_id": "edge-local",
                "detector": {"model_path": str(model or default_model_path())},
                "evidence": {"root": str(evidence or Path("evidence"))},
                "cameras": [{"id": camera_id, "source": {"url": source}, "zones": str(zones)}],
            },
            base_dir=Path.cwd(),
        )
    output = loaded.output.model_copy(
        update={k: v for k, v in {"events": events, "detlog_dir": record}.items() if v is not None}
    )
    return loaded.model_copy(update={"output": output})


def run_edge(config: EdgeConfig) -> dict[str, CameraReport]:
    """Run until every source ends or SIGINT/SIGTERM arrives."""
    with contextlib.ExitStack() as stack:
        stream = sys.stdout
        if config.output.events != "-":
            stream = stack.enter_context(Path(config.output.events).open("a", encoding="utf-8"))
        sinks: list[EventSink] = [JsonLinesSink(stream)]
        uplink = Uplink(config.delivery, config.evidence.root) if config.delivery else None
        if uplink is not None:
            sinks.append(uplink.sink)
            stack.callback(uplink.stop)
        # Only a connected box receives models, so only it can have one to restore.
        delivery = config.delivery
        detector = startup_detector(config.detector, model_store(delivery.outbox_path)) if delivery else None
        runner = EdgeRunner(config, TeeSink(sinks), detector, samples=uplink.sink if uplink else None)
        if uplink is not None:
            uplink.start(runner)
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, lambda *_: runner.stop()) for sig in stop_signals}
        try:
            return runner.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def replay_file(
    zones: Path, detlog: Path, config: Path | None = None, device_id: str = "replay"
) -> Iterator[object]:
    """Replay a detection log file (or '-' for stdin) against a zone file."""
    zone_file = load_zone_file(zones)
    parts = PipelineParts()
    if config is not None:
        edge = load_edge_config(config)
        parts = PipelineParts(gate=edge.gate, tracker=edge.tracker, rules=edge.rules, bins=edge.bins)
    frames = read_detlog(sys.stdin, "<stdin>") if str(detlog) == "-" else open_detlog(detlog)
    yield from replay(frames, zone_file, parts, EventBuilder(device_id, zone_file, model=None))
