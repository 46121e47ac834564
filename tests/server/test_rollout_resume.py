"""A rollout outlives its command line: ``curbwatch models rollout`` stops right after the canary was
sent, the canary's ``applied`` answer is filed by the ingest handler with no rollout command running,
and ``curbwatch models rollout-resume`` sends the model to the others, each once, over Mosquitto."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.schema.protocol import CommandResultV1, CommandV1
from curbwatch.server.config import CaseServerConfig
from curbwatch.server.db import make_engine, make_session_factory
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import DeviceUpdates, MessageHandler, ReceivedMessage, Result
from curbwatch.server.models_rollout import DeviceRolloutState, RolloutState, rollout_status
from curbwatch.training.registry import Registry
from tests.server.conftest import PrivateBroker, register
from tests.server.test_rollout_roundtrip import register_model
from tests.training.conftest import fresh_database

pytestmark = pytest.mark.timeout(60)

AT = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def own_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A database of this test alone: `rollout-resume --all` takes every unfinished rollout in it."""
    for url in fresh_database(request.param, tmp_path):
        engine = make_engine(url)
        try:
            yield url, make_session_factory(engine)
        finally:
            engine.dispose()


class FakeDevices:
    """Subscribes to every device's commands; devices in ``answering`` apply at once (via the handler)."""

    def __init__(
        self, broker: PrivateBroker, factory: sessionmaker[Session], handler: MessageHandler
    ) -> None:
        self.factory, self.handler = factory, handler
        self.commands: dict[str, list[str]] = {}  # device -> correlation ids received, in order
        self.answering: set[str] = set()
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"devices-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("curbwatch/v1/+/command", qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        device = message.topic.split("/")[2]
        command = CommandV1.model_validate(json.loads(message.payload))
        with self.lock:
            self.commands.setdefault(device, []).append(command.correlation_id)
        if device in self.answering:
            self.answer(device, command.correlation_id)

    def answer(self, device: str, correlation_id: str) -> Result:
        result = CommandResultV1(
            correlation_id=correlation_id,
            ok=True,
            result={"state": "applied", "model_version": "curb-nano@2"},
        )
        message = ReceivedMessage(
            f"curbwatch/v1/{device}/command/result", result.model_dump_json(by_alias=True).encode(), AT
        )
        with self.factory() as session, session.begin():
            return self.handler.handle(session, message, DeviceUpdates()).result

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cli(broker: PrivateBroker, database_url: str, *args: str) -> tuple[int, str]:
    env = {"CURBWATCH_MQTT_PORT": str(broker.port), "CURBWATCH_WORKER_NAME": f"cli-{uuid.uuid4().hex[:6]}"}
    result = CliRunner().invoke(app, ["models", *args, "--database-url", database_url], env=env)
    return result.exit_code, result.output


def test_a_rollout_whose_command_stopped_after_the_canary_is_resumed_to_the_others(
    tmp_path: Path, broker: PrivateBroker, own_database: tuple[str, sessionmaker[Session]]
) -> None:
    database_url, session_factory = own_database
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model v2" * 100)
    registry = Registry(tmp_path / "models")
    register_model(registry, "2", model)
    a, b, c = (register(session_factory)[0] for _ in range(3))
    handler = MessageHandler(
        EvidenceStore(tmp_path / "evidence"), CaseServerConfig(), max_payload_bytes=1 << 20
    )
    devices = FakeDevices(broker, session_factory, handler)
    try:
        # The command line gives up (as if killed) with the canary sent and not yet answered.
        code, output = cli(
            broker,
            database_url,
            "rollout",
            "curb-nano@2",
            "--devices",
            f"{a},{b},{c}",
            "--canary",
            b,
            "--timeout",
            "1",
            "--registry",
            str(registry.root),
        )
        assert code == 1 and "timed out" in output
        rollout_id = rollout_id_of_output(output)
        with devices.lock:
            assert devices.commands.keys() == {b}
            [canary_command] = devices.commands[b]
        assert devices.answer(b, canary_command) is Result.RECORDED  # the ingest worker files it
        with session_factory() as session:
            stalled = rollout_status(session, rollout_id)
        assert stalled.state is RolloutState.ROLLING
        assert [t.state for t in stalled.targets] == ["pending", "applied", "pending"]

        devices.answering = {a, c}
        code, output = cli(
            broker,
            database_url,
            "rollout-resume",
            "--all",
            "--timeout",
            "10",
            "--registry",
            str(registry.root),
        )

        assert code == 0, output
        assert f"rollout {rollout_id}: done" in output
        with session_factory() as session:
            view = rollout_status(session, rollout_id)
        assert [t.state for t in view.targets] == [DeviceRolloutState.APPLIED] * 3
        with devices.lock:
            assert Counter({d: len(ids) for d, ids in devices.commands.items()}) == {a: 1, b: 1, c: 1}
        code, output = cli(
            broker,
            database_url,
            "rollout-resume",
            "--all",
            "--timeout",
            "1",
            "--registry",
            str(registry.root),
        )
        assert code == 0 and rollout_id not in output, "a finished rollout is left alone"
    finally:
        devices.close()


def test_a_rollout_is_not_resumed_with_a_changed_model_or_an_unknown_id(
    tmp_path: Path, broker: PrivateBroker, own_database: tuple[str, sessionmaker[Session]]
) -> None:
    database_url, session_factory = own_database
    model = tmp_path / "model.onnx"
    model.write_bytes(b"model v2")
    registry = Registry(tmp_path / "models")
    register_model(registry, "2", model)
    device, _ = register(session_factory)
    _, output = cli(
        broker,
        database_url,
        "rollout",
        "curb-nano@2",
        "--devices",
        device,
        "--timeout",
        "1",
        "--registry",
        str(registry.root),
    )
    rollout_id = rollout_id_of_output(output)
    model.write_bytes(b"tampered")

    changed = cli(broker, database_url, "rollout-resume", rollout_id, "--registry", str(registry.root))
    unknown = cli(broker, database_url, "rollout-resume", "f" * 32, "--registry", str(registry.root))
    neither = cli(broker, database_url, "rollout-resume", "--registry", str(registry.root))

    assert changed[0] == 1 and "sha256 mismatch" in changed[1]
    assert unknown[0] == 1 and f"no rollout '{'f' * 32}'" in unknown[1]
    assert neither[0] == 1 and "name rollout ids or pass --all" in neither[1]


def rollout_id_of_output(output: str) -> str:
    """The id in the first line ``rollout <id>: ...`` of ``curbwatch models rollout``."""
    return output.split()[1].rstrip(":")
