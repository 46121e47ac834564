"""Labelling samples from the edge outbox into the ``samples`` table, on SQLite and PostgreSQL:
stored once, acknowledged like events, refusals dead-lettered, the image filed as evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from curbwatch.edge.evidence import EvidenceConfig, EvidenceWriter
from curbwatch.edge.messages import Frame
from curbwatch.edge.outbox import ItemKind, Outbox, OutboxConfig
from curbwatch.edge.sampling import CameraSampling, SamplingConfig
from curbwatch.schema.protocol import AckStatus, Channel, SampleV1, sign, topic
from curbwatch.server.config import CaseServerConfig, GridConfig
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.handler import (
    DeviceUpdates,
    MessageHandler,
    Outcome,
    ReceivedMessage,
    RejectReason,
    Result,
)
from curbwatch.server.tables import DeadLetter, Evidence, Sample
from tests.edge.test_sampling import ZONES, uncertain_car
from tests.factories import make_tracks
from tests.server.conftest import register

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
T0 = 1_780_000_000.0


@pytest.fixture
def handler(tmp_path: Path) -> MessageHandler:
    grid = GridConfig(origin_lat=31.2, origin_lon=121.4, cell_m=100)
    return MessageHandler(
        EvidenceStore(tmp_path / "store"), CaseServerConfig(grid=grid), max_payload_bytes=8 * 1024 * 1024
    )


def edge_messages(tmp_path: Path, device_id: str, key: bytes, frames: int = 1) -> list[tuple[str, bytes]]:
    """What the edge's publisher sends for ``frames`` sampled frames: topic and payload per outbox row."""
    sink_outbox = Outbox(tmp_path / "outbox.db", OutboxConfig(), device_id=device_id, key=key)
    writer = EvidenceWriter(EvidenceConfig(root=tmp_path / "edge-evidence"))

    class Sink:
        def emit_sample(self, sample: SampleV1, image: Path) -> None:
            sink_outbox.put_sample(sample, image)

    stage = CameraSampling(SamplingConfig(enabled=True, cooldown_s=0), writer, device_id, None, Sink())
    rng = np.random.default_rng(0)
    for index in range(frames):
        frame = Frame("cam", T0 + 60 * index, rng.integers(0, 255, (480, 640, 3), np.uint8), index)
        stage.offer(frame, uncertain_car(), make_tracks([], ts=frame.ts, frame_wh=(640, 480)), ZONES)
    messages = []
    for item in sink_outbox.lease(100):
        if item.kind is ItemKind.EVIDENCE:
            assert item.path is not None
            messages.append((topic(device_id, Channel.EVIDENCE, item.ref), item.path.read_bytes()))
        else:
            assert item.kind is ItemKind.SAMPLE and item.payload is not None
            messages.append((topic(device_id, Channel.SAMPLE), item.payload))
    sink_outbox.close()
    return messages


def handle_all(
    factory: sessionmaker[Session], handler: MessageHandler, messages: list[tuple[str, bytes]]
) -> list[Outcome]:
    received = [ReceivedMessage(t, p, NOW) for t, p in messages]
    with factory() as session, session.begin():
        return handler.handle_batch(session, received, DeviceUpdates())


def test_samples_are_stored_once_with_their_images_and_acked(
    tmp_path: Path, session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    device_id, key = register(session_factory)
    messages = edge_messages(tmp_path, device_id, key, frames=2)
    first = handle_all(session_factory, handler, messages)
    again = handle_all(session_factory, handler, messages)

    assert [o.result for o in first] == [Result.STORED] * 4
    assert [(o.ack.kind, o.ack.status) for o in first if o.ack] == [
        ("evidence", AckStatus.STORED), ("sample", AckStatus.STORED),
    ] * 2  # fmt: skip
    assert [o.ack.status for o in again if o.ack] == [AckStatus.DUPLICATE] * 4
    with session_factory() as session:
        rows = session.scalars(select(Sample).where(Sample.device_id == device_id).order_by(Sample.ts)).all()
        assert [row.seq for row in rows] == [1, 2]
        assert [row.ts.timestamp() for row in rows] == [T0, T0 + 60]
        assert all(row.camera_id == "cam" and row.uncertain_count == 1 for row in rows)
        for row in rows:
            assert session.get(Evidence, row.image_sha256) is not None  # the labeller can open it
            document = SampleV1.model_validate(row.document)
            assert document.sample_id == row.sample_id
            assert [(d.label, d.score, d.uncertain) for d in document.detections] == [("car", 0.4, True)]


def _tampered(payload: bytes, key: bytes, **changes: object) -> bytes:
    body = json.loads(payload)
    body["payload"] = {**body["payload"], **changes}
    body["sig"] = sign(body, key)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("tamper", "reason", "acked"),
    [
        (lambda p, k: _tampered(p, b"x" * 32), RejectReason.BAD_SIGNATURE, False),
        (lambda p, k: _tampered(p, k, reason="bored"), RejectReason.SCHEMA, True),
        (lambda p, k: _tampered(p, k, sample_id="0" * 32), RejectReason.ID_MISMATCH, True),
        (lambda p, k: _tampered(p, k, device_id="someone-else"), RejectReason.ID_MISMATCH, True),
        (lambda p, k: b"[]", RejectReason.SCHEMA, False),
    ],
)
def test_bad_samples_are_dead_lettered(
    tmp_path: Path,
    session_factory: sessionmaker[Session],
    handler: MessageHandler,
    tamper,
    reason: RejectReason,
    acked: bool,
) -> None:
    device_id, key = register(session_factory)
    (_, _), (sample_topic, payload) = edge_messages(tmp_path, device_id, key)
    (outcome,) = handle_all(session_factory, handler, [(sample_topic, tamper(payload, key))])
    assert (outcome.result, outcome.reason) == (Result.REJECTED, reason)
    assert (outcome.ack is not None and outcome.ack.status is AckStatus.REJECTED) == acked
    with session_factory() as session:
        assert session.scalars(select(Sample).where(Sample.device_id == device_id)).all() == []
        dead = session.scalars(select(DeadLetter).where(DeadLetter.device_id == device_id)).one()
        assert dead.reason == reason.value


def test_unknown_device_samples_are_refused(
    tmp_path: Path, session_factory: sessionmaker[Session], handler: MessageHandler
) -> None:
    _, (sample_topic, payload) = edge_messages(tmp_path, "edge-unregistered", b"k" * 32)
    (outcome,) = handle_all(session_factory, handler, [(sample_topic, payload)])
    assert outcome.reason is RejectReason.UNKNOWN_DEVICE and outcome.ack is None
