"""A model rollout end to end over Mosquitto: ``curbwatch models rollout`` sends a registered model to
a running edge box, which swaps it in, keeps it through probation and answers ``applied``; then a
broken model (bytes whose sha256 the command announces, but no ONNX) fails to load, the box keeps
the model in service, and the server halts the rollout before the second device."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.config import edge_config_from_dict
from curbwatch.edge.detect.card import file_sha256, load_card
from curbwatch.edge.runner import EdgeRunner
from curbwatch.edge.uplink import Uplink
from curbwatch.server.ingest import IngestWorker
from curbwatch.server.models_rollout import DeviceRolloutState, RolloutState, rollout_status
from curbwatch.training.registry import REPO_ROOT, Registry, RegistryEntry
from tests.edge.test_runner import write_zone_file
from tests.server.conftest import PrivateBroker, register
from tests.server.test_ingest import worker_settings

pytestmark = pytest.mark.timeout(150)

CAMERA = "drive"
NAME = "curb-nano"
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


def register_model(registry: Registry, version: str, path: Path) -> None:
    """A registry card; YOLOX carries no metadata, so the edge finds its card in its models folder."""
    card = load_card(REPO_ROOT / "models" / "yolox_nano.card.yaml")
    registry.add(
        RegistryEntry(
            name=NAME,
            version=version,
            created_at=datetime(2026, 11, 27, tzinfo=UTC),
            family=card.family,
            input_size_hw=card.input_size_hw,
            class_names=list(card.class_names),
            strides=list(card.strides),
            file=registry.file_ref(path),
        )
    )


def edge_models_dir(folder: Path) -> Path:
    """The box's card folder: the model in service, and the card the rolled-out version will need."""
    folder.mkdir()
    text = (REPO_ROOT / "models" / "yolox_nano.card.yaml").read_text()
    (folder / "yolox_nano.card.yaml").write_text(text)
    rolled = [line for line in text.splitlines() if not line.startswith(("name:", "version:", "sha256:"))]
    (folder / f"{NAME}.card.yaml").write_text("\n".join([f"name: {NAME}", 'version: "2"', *rolled]) + "\n")
    return folder


def test_a_good_model_is_applied_and_a_broken_one_halts_the_rollout(
    broker: PrivateBroker,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    data_dir: Path,
    yolox_nano_path: Path,
) -> None:
    device_id, key = register(session_factory)
    idle_device, _ = register(session_factory)
    image_path = data_dir / "frigate-cctv" / "driveway_zones.png"
    stills = write_fast_stills(tmp_path / "stills", image_path, count=900)
    zones = write_zone_file(
        tmp_path / "zones.json",
        CAMERA,
        (1334, 650),
        [{"name": "far-kerb", "kind": "no_parking", "polygon": [[100, 105], [640, 120], [640, 150]]}],
    )
    registry = Registry(tmp_path / "models")
    register_model(registry, "2", yolox_nano_path)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model " * 100)
    register_model(registry, "3", broken)
    edge_config = edge_config_from_dict(
        {
            "version": 1,
            "device_id": device_id,
            "detector": {
                "model_path": str(yolox_nano_path),
                "models_dir": str(edge_models_dir(tmp_path / "cards")),
            },
            # The stills do not move: infer every frame, so the probation sees its 60 frames in 6 s.
            "gate": {"warmup_s": 3600},
            "evidence": {"root": str(tmp_path / "edge-evidence")},
            "delivery": {
                "outbox_path": str(tmp_path / "edge" / "outbox.sqlite"),
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
                {"id": CAMERA, "source": {"url": f"stills:{stills}", "realtime": True}, "zones": str(zones)}
            ],
        },
        base_dir=tmp_path,
    )
    settings = worker_settings(broker, database_url, tmp_path, f"g{uuid.uuid4().hex[:8]}", "rollout")
    worker = IngestWorker(settings, session_factory)
    assert edge_config.delivery is not None
    uplink = Uplink(edge_config.delivery, edge_config.evidence.root)
    cli = CliRunner()
    env = {
        "CURBWATCH_MQTT_PORT": str(broker.port),
        "CURBWATCH_WORKER_NAME": f"rollout-{uuid.uuid4().hex[:6]}",
    }
    common = ["--registry", str(registry.root), "--database-url", database_url, "--timeout", "60"]
    worker.start()
    runner = EdgeRunner(edge_config, uplink.sink)
    camera = threading.Thread(target=runner.run, name="edge-runner")
    try:
        assert worker.wait_subscribed(10)
        uplink.start(runner)
        camera.start()

        good = cli.invoke(app, ["models", "rollout", f"{NAME}@2", "--devices", device_id, *common], env=env)
        model_after_good = runner.model_version
        bad = cli.invoke(
            app,
            ["models", "rollout", f"{NAME}@3", "--devices", f"{device_id},{idle_device}", *common],
            env=env,
        )
        model_after_bad = runner.model_version
    finally:
        runner.stop()
        camera.join(30)
        uplink.stop()
        worker.stop()

    assert good.exit_code == 0, good.output
    assert f"{device_id} (canary): applied: in service: {NAME}@2" in good.output
    assert model_after_good == model_after_bad == f"{NAME}@2"
    assert bad.exit_code == 1, bad.output
    assert "halted" in bad.output
    bad_id = bad.output.split()[1].rstrip(":")
    with session_factory() as session:
        view = rollout_status(session, bad_id)
    assert view.state is RolloutState.HALTED
    assert [t.state for t in view.targets] == [DeviceRolloutState.FAILED, DeviceRolloutState.PENDING]
    assert "load error" in (view.targets[0].detail or "")
    assert view.sha256 == file_sha256(broken)

    status = cli.invoke(app, ["models", "rollout-status", bad_id, "--database-url", database_url])
    assert status.exit_code == 0 and f"{idle_device}: pending" in status.output
