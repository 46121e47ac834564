"""Device registry and the ``server migrate`` / ``devices add|list`` commands."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from curbwatch.schema.protocol import HeartbeatV1, StatusV1
from curbwatch.server.cli import _standalone
from curbwatch.server.devices import (
    DeviceError,
    DeviceExistsError,
    UnknownDeviceError,
    add_device,
    device_key,
    record_heartbeat,
    record_status,
)
from curbwatch.server.settings import get_settings

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def test_registry(session_factory) -> None:
    with session_factory() as session, session.begin():
        key_hex = add_device(session, "edge-registry-1")
        assert device_key(session, "edge-registry-1") == bytes.fromhex(key_hex) and len(key_hex) == 64
        assert device_key(session, "edge-nope") is None
        with pytest.raises(DeviceExistsError):
            add_device(session, "edge-registry-1")
        with pytest.raises(DeviceError):
            add_device(session, "bad/id")
        record_status(session, StatusV1(device_id="edge-registry-1", state="offline"), received_at=NOW)
        heartbeat = HeartbeatV1(
            device_id="edge-registry-1", ts=NOW, outbox_depth=0, outbox_bytes=0, disk_free_bytes=1
        )
        record_heartbeat(session, heartbeat, received_at=NOW)
        with pytest.raises(UnknownDeviceError):
            record_status(session, StatusV1(device_id="edge-nope", state="online"), received_at=NOW)


def test_commands(tmp_path) -> None:
    runner = CliRunner()
    url = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    assert runner.invoke(_standalone, ["server", "migrate", *url]).exit_code == 0
    added = runner.invoke(_standalone, ["devices", "add", "edge-cli", *url])
    assert added.exit_code == 0 and len(added.output.strip()) == 64
    assert runner.invoke(_standalone, ["devices", "add", "edge-cli", *url]).exit_code == 1
    listed = runner.invoke(_standalone, ["devices", "list", *url])
    assert listed.output.startswith("edge-cli\t-\t-\tseq=0")


def test_settings_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("CURBWATCH_WORKER_NAME", "w7")
    monkeypatch.setenv("CURBWATCH_MQTT_PORT", "1999")
    settings = get_settings(share_group="grp")
    assert (settings.client_id, settings.mqtt_port, settings.share_group) == (
        "curbwatch-ingest-w7",
        1999,
        "grp",
    )
    with pytest.raises(ValueError, match="extra"):
        get_settings(nonsense=1)


def test_share_group_none_from_environment_subscribes_plainly(monkeypatch) -> None:
    monkeypatch.setenv("CURBWATCH_SHARE_GROUP", "none")
    assert get_settings().share_group is None
    monkeypatch.setenv("CURBWATCH_SHARE_GROUP", "")
    with pytest.raises(ValueError, match="share_group"):
        get_settings()


def test_options_left_out_keep_the_environments_settings(monkeypatch) -> None:
    from curbwatch.server.settings import settings_from_options

    monkeypatch.setenv("CURBWATCH_DATABASE_URL", "sqlite:///env.db")
    assert settings_from_options(database_url=None).database_url == "sqlite:///env.db"
    assert settings_from_options(database_url="").database_url == "sqlite:///env.db"
    assert settings_from_options(database_url="sqlite:///opt.db").database_url == "sqlite:///opt.db"
