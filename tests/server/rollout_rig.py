"""A test edge box answering model rollouts over a private Mosquitto, and the server side that drives them.

Shared by the rollout round trip (``tests/server/test_rollout_roundtrip.py``) and the whole learning
loop (``tests/training/test_whole_loop.py``): an edge runner on a real-time stills source with its
uplink, the server's ingest worker filing the devices' answers, and ``curbwatch models rollout`` run
in-process.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
from click.testing import Result
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.config import EdgeConfig, edge_config_from_dict
from curbwatch.edge.runner import EdgeRunner
from curbwatch.edge.uplink import Uplink
from curbwatch.server.ingest import IngestWorker
from curbwatch.training.registry import Registry
from tests.server.conftest import PrivateBroker
from tests.server.test_ingest import worker_settings

START = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def write_fast_stills(folder: Path, image_path: Path, count: int) -> Path:
    """``count`` copies of one JPEG, 100 ms apart (millisecond file names), for a real-time source."""
    folder.mkdir(parents=True)
    ok, encoded = cv2.imencode(".jpg", cv2.imread(str(image_path)))
    assert ok
    for index in range(count):
        seconds, tenths = divmod(index, 10)
        stamp = (START + timedelta(seconds=seconds)).strftime("%Y%m%d%H%M%S")
        (folder / f"cam_{stamp}{tenths * 100:03d}.jpg").write_bytes(encoded.tobytes())
    return folder


def rollout_edge_config(
    folder: Path,
    broker: PrivateBroker,
    device: tuple[str, bytes],
    *,
    model_path: Path,
    models_dir: Path,
    camera: str,
    stills: Path,
    zones: Path,
    detector: dict[str, Any] | None = None,
) -> EdgeConfig:
    """An edge box with one real-time stills camera, linked to ``broker`` as ``device`` (id, key).

    ``detector`` adds detector settings (thresholds) to the model and its card folder.
    """
    device_id, key = device
    return edge_config_from_dict(
        {
            "version": 1,
            "device_id": device_id,
            "detector": {"model_path": str(model_path), "models_dir": str(models_dir), **(detector or {})},
            # The stills do not move: infer every frame, so the probation sees its 60 frames in 6 s.
            "gate": {"warmup_s": 3600},
            "evidence": {"root": str(folder / "edge-evidence")},
            "delivery": {
                "outbox_path": str(folder / "edge" / "outbox.sqlite"),
                "config_wait_s": 1,
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "device_id": device_id,
                    "device_key": key.hex(),
                    "protocol": "3.1.1",
                },
            },
            "cameras": [
                {"id": camera, "source": {"url": f"stills:{stills}", "realtime": True}, "zones": str(zones)}
            ],
        },
        base_dir=folder,
    )


@contextmanager
def running_edge(
    edge_config: EdgeConfig,
    broker: PrivateBroker,
    database_url: str,
    session_factory: sessionmaker[Session],
    folder: Path,
) -> Iterator[EdgeRunner]:
    """The server's ingest worker and the edge box (runner and uplink) running until the block ends."""
    settings = worker_settings(broker, database_url, folder, f"g{uuid.uuid4().hex[:8]}", "rollout")
    worker = IngestWorker(settings, session_factory)
    assert edge_config.delivery is not None
    uplink = Uplink(edge_config.delivery, edge_config.evidence.root)
    runner = EdgeRunner(edge_config, uplink.sink)
    camera = threading.Thread(target=runner.run, name="edge-runner")
    worker.start()
    try:
        assert worker.wait_subscribed(10)
        uplink.start(runner)
        camera.start()
        yield runner
    finally:
        runner.stop()
        if camera.is_alive():
            camera.join(30)
        uplink.stop()
        worker.stop()


def models_rollout(
    broker: PrivateBroker, registry: Registry, database_url: str, ref: str, devices: list[str]
) -> Result:
    """``curbwatch models rollout ref --devices ...``, in-process, waiting up to 60 s per device."""
    env = {
        "CURBWATCH_MQTT_PORT": str(broker.port),
        "CURBWATCH_WORKER_NAME": f"rollout-{uuid.uuid4().hex[:6]}",
    }
    args = ["models", "rollout", ref, "--devices", ",".join(devices), "--registry", str(registry.root)]
    return CliRunner().invoke(app, [*args, "--database-url", database_url, "--timeout", "60"], env=env)


def rollout_id_of(result: Result) -> str:
    """The rollout id ``curbwatch models rollout`` printed first (``rollout <id>: ...``)."""
    return result.output.split()[1].rstrip(":")
