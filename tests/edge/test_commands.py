"""Server commands on the edge: only signed ones run; a snapshot becomes queued, blurred evidence."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from curbwatch.edge.commands import Commands
from curbwatch.edge.evidence import EvidenceConfig, EvidenceWriter
from curbwatch.edge.messages import Detections, Frame
from curbwatch.edge.outbox import ItemKind, Outbox, OutboxConfig
from curbwatch.schema.protocol import sign

KEY = b"k" * 32
TS = datetime(2026, 11, 27, 9, 30, 5, tzinfo=UTC).timestamp()
CLASSES = ("person", "car")
PERSON_BOX = (200.0, 100.0, 260.0, 280.0)


def textured(height: int = 360, width: int = 480) -> np.ndarray:
    """A sharp checkerboard: blurring any part of it shows."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.where(((ys // 4) + (xs // 4)) % 2 == 0, 230, 20).astype(np.uint8)[..., None].repeat(3, axis=2)


@dataclass
class FakeEdge:
    """The running edge as commands see it: one camera, its last frame, a detector that sees one person."""

    evidence: EvidenceWriter
    camera_ids: tuple[str, ...] = ("cam-1", "cam-2")
    frames: dict[str, Frame] = field(default_factory=dict)

    def latest_frame(self, camera_id: str) -> Frame | None:
        return self.frames.get(camera_id)

    def detect(self, image: np.ndarray) -> Detections:
        return Detections.from_labels([PERSON_BOX], [0.9], ["person"], CLASSES)


@pytest.fixture
def edge(tmp_path: Path) -> FakeEdge:
    fake = FakeEdge(EvidenceWriter(EvidenceConfig(root=tmp_path / "evidence")))
    fake.frames["cam-1"] = Frame("cam-1", TS, textured(), 41)
    return fake


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", OutboxConfig(), device_id="edge-1", key=KEY) as box:
        yield box


def command(name: str = "snapshot", key: bytes = KEY, **args: Any) -> tuple[str, bytes]:
    document: dict[str, Any] = {
        "schema": "curbwatch.command.v1",
        "correlation_id": uuid.uuid4().hex,
        "name": name,
        "args": args,
    }
    document["sig"] = sign(document, key)
    return document["correlation_id"], json.dumps(document).encode()


def test_a_snapshot_is_a_blurred_jpeg_queued_as_evidence(edge: FakeEdge, outbox: Outbox) -> None:
    correlation_id, payload = command(camera_id="cam-1", case_id="c" * 32)
    result = Commands(edge, outbox, KEY).handle(payload)

    assert result is not None and result.ok and result.correlation_id == correlation_id
    assert result.result["camera_id"] == "cam-1"
    assert result.result["ts"] == "2026-11-27T09:30:05+00:00"
    [item] = outbox.lease(10)
    assert (item.kind, item.ref, item.event_id) == (ItemKind.EVIDENCE, result.result["sha256"], None)
    data = item.path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and hashlib.sha256(data).hexdigest() == result.result["sha256"]
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    original = textured().astype(np.float32)
    head, legs = (slice(110, 150), slice(210, 250)), (slice(230, 270), slice(210, 250))
    assert np.abs(image[head] - original[head]).mean() > 40  # the checkerboard is gone from the head
    assert np.abs(image[legs] - original[legs]).mean() < 15  # the rest is the frame as it was


def test_a_repeated_command_is_answered_as_before(edge: FakeEdge, outbox: Outbox) -> None:
    commands = Commands(edge, outbox, KEY)
    _, payload = command(camera_id="cam-1")
    first = commands.handle(payload)
    edge.frames["cam-1"] = Frame("cam-1", TS + 60, textured(), 99)
    assert commands.handle(payload) == first
    assert outbox.depth() == 1


@pytest.mark.parametrize(
    "payload",
    [
        command(camera_id="cam-1", key=b"x" * 32)[1],
        json.dumps({"schema": "curbwatch.command.v1", "correlation_id": "a" * 32, "name": "ping"}).encode(),
        b"{not json",
        json.dumps({**json.loads(command(camera_id="cam-1")[1]), "args": {"camera_id": "cam-2"}}).encode(),
    ],
    ids=["forged", "unsigned", "not json", "altered"],
)
def test_an_unauthentic_command_is_refused_unanswered(edge: FakeEdge, outbox: Outbox, payload: bytes) -> None:
    assert Commands(edge, outbox, KEY).handle(payload) is None
    assert outbox.depth() == 0


@pytest.mark.parametrize(
    ("name", "args", "error"),
    [
        ("snapshot", {"camera_id": "cam-9"}, "camera 'cam-9' does not run on this box"),
        ("snapshot", {}, "camera None does not run on this box"),
        ("snapshot", {"camera_id": "cam-2"}, "camera cam-2 has no frame yet"),
        ("recheck_zone", {"camera_id": "cam-1"}, "command 'recheck_zone' is not supported by this device"),
    ],
)
def test_a_command_that_cannot_be_done_is_answered_with_why(
    edge: FakeEdge, outbox: Outbox, name: str, args: dict[str, str], error: str
) -> None:
    _, payload = command(name, **args)
    result = Commands(edge, outbox, KEY).handle(payload)
    assert result is not None and (result.ok, result.error, result.result) == (False, error, {})
    assert outbox.depth() == 0


def test_ping_is_answered_ok(edge: FakeEdge, outbox: Outbox) -> None:
    correlation_id, payload = command("ping")
    result = Commands(edge, outbox, KEY).handle(payload)
    assert result is not None and (result.correlation_id, result.ok, result.error) == (
        correlation_id,
        True,
        None,
    )


def test_a_failing_detector_is_answered_not_raised(edge: FakeEdge, outbox: Outbox) -> None:
    def broken(image: np.ndarray) -> Detections:
        raise RuntimeError("onnxruntime: device lost")

    edge.detect = broken  # type: ignore[method-assign]
    _, payload = command(camera_id="cam-1")
    result = Commands(edge, outbox, KEY).handle(payload)
    assert result is not None and not result.ok and "device lost" in (result.error or "")
