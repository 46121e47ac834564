"""A model rollout end to end over Mosquitto: ``curbwatch models rollout`` sends a registered model to
a running edge box, which swaps it in, keeps it through probation and answers ``applied``; then a
broken model (bytes whose sha256 the command announces, but no ONNX) fails to load, the box keeps
the model in service, and the server halts the rollout before the second device."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.detect.card import file_sha256, load_card
from curbwatch.server.models_rollout import DeviceRolloutState, RolloutState, rollout_status
from curbwatch.training.registry import REPO_ROOT, Registry, RegistryEntry
from tests.edge.test_runner import write_zone_file
from tests.server.conftest import PrivateBroker, register
from tests.server.rollout_rig import (
    models_rollout,
    rollout_edge_config,
    rollout_id_of,
    running_edge,
    write_fast_stills,
)

pytestmark = pytest.mark.timeout(150)

CAMERA = "drive"
NAME = "curb-nano"


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
    edge_config = rollout_edge_config(
        tmp_path,
        broker,
        (device_id, key),
        model_path=yolox_nano_path,
        models_dir=edge_models_dir(tmp_path / "cards"),
        camera=CAMERA,
        stills=stills,
        zones=zones,
    )
    with running_edge(edge_config, broker, database_url, session_factory, tmp_path) as runner:
        good = models_rollout(broker, registry, database_url, f"{NAME}@2", [device_id])
        model_after_good = runner.model_version
        bad = models_rollout(broker, registry, database_url, f"{NAME}@3", [device_id, idle_device])
        model_after_bad = runner.model_version

    assert good.exit_code == 0, good.output
    assert f"{device_id} (canary): applied: in service: {NAME}@2" in good.output
    assert model_after_good == model_after_bad == f"{NAME}@2"
    assert bad.exit_code == 1, bad.output
    assert "halted" in bad.output
    bad_id = rollout_id_of(bad)
    with session_factory() as session:
        view = rollout_status(session, bad_id)
    assert view.state is RolloutState.HALTED
    assert [t.state for t in view.targets] == [DeviceRolloutState.FAILED, DeviceRolloutState.PENDING]
    assert "load error" in (view.targets[0].detail or "")
    assert view.sha256 == file_sha256(broken)

    status = CliRunner().invoke(app, ["models", "rollout-status", bad_id, "--database-url", database_url])
    assert status.exit_code == 0 and f"{idle_device}: pending" in status.output
