"""``curbwatch models rollout`` and ``rollout-status`` refuse bad input with a clear message, before
anything reaches a device."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.training.registry import Registry
from tests.server.conftest import register
from tests.server.test_rollout_roundtrip import register_model

CLI = CliRunner()


def rollout(registry: Path, database_url: str, *args: str) -> tuple[int, str]:
    result = CLI.invoke(
        app, ["models", "rollout", *args, "--registry", str(registry), "--database-url", database_url]
    )
    return result.exit_code, result.output


def test_a_model_file_changed_since_it_was_registered_is_not_sent(
    tmp_path: Path, database_url: str, session_factory: sessionmaker[Session]
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model v2")
    registry = Registry(tmp_path / "models")
    register_model(registry, "2", model)
    model.write_bytes(b"tampered")
    device, _ = register(session_factory)

    code, output = rollout(registry.root, database_url, "curb-nano@2", "--devices", device)

    assert code == 1 and "sha256 mismatch" in output


def test_unknown_models_devices_and_rollouts_are_named(
    tmp_path: Path, database_url: str, session_factory: sessionmaker[Session]
) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model v2")
    registry = Registry(tmp_path / "models")
    register_model(registry, "2", model)
    device, _ = register(session_factory)

    unknown_model = rollout(registry.root, database_url, "curb-nano@9", "--devices", device)
    unknown_device = rollout(registry.root, database_url, "curb-nano@2", "--devices", f"{device},ghost")
    bad_canary = rollout(registry.root, database_url, "curb-nano@2", "--devices", device, "--canary", "ghost")
    status = CLI.invoke(app, ["models", "rollout-status", "f" * 32, "--database-url", database_url])

    assert unknown_model[0] == 1 and "versions of curb-nano: curb-nano@2" in unknown_model[1]
    assert unknown_device[0] == 1 and "unknown devices: ghost" in unknown_device[1]
    assert bad_canary[0] == 1 and "canary 'ghost' is not one of the devices" in bad_canary[1]
    assert status.exit_code == 1 and f"no rollout '{'f' * 32}'" in status.output
