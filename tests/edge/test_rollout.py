"""Model updates on the edge: verified bytes, a swap between frames, probation and rollback."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from curbwatch.edge.commands import Commands
from curbwatch.edge.detect.onnx import DetectorConfig, OnnxDetector
from curbwatch.edge.evidence import EvidenceConfig, EvidenceWriter
from curbwatch.edge.messages import Detections
from curbwatch.edge.outbox import Outbox, OutboxConfig
from curbwatch.edge.rollout import ModelUpdater, ProbationConfig, load_detector
from curbwatch.schema.protocol import CommandResultV1, CommandV1, sign
from tests.edge.test_commands import KEY, FakeEdge

CLASSES = ("person", "car")
IMAGE = np.zeros((64, 64, 3), np.uint8)
PROBATION = ProbationConfig(probation_frames=12, shadow_every=2, max_miss_share=0.5)


class FakeDetector:
    """Stands in for an OnnxDetector: finds one car, nothing, or raises after some frames."""

    def __init__(self, version: str, *, finds: bool = True, raise_after: int | None = None) -> None:
        self.card = SimpleNamespace(name="det", version=version, sha256=None)
        self.class_names = CLASSES
        self.config = DetectorConfig(model_path=Path("det.onnx"))
        self.threshold_settings: tuple[float, dict[str, float]] = (0.3, {})
        self.finds, self.raise_after, self.calls = finds, raise_after, 0

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        if self.raise_after is not None and self.calls > self.raise_after:
            raise RuntimeError("output tensor is NaN")
        if not self.finds:
            return Detections.empty(CLASSES)
        return Detections.from_labels([(1.0, 1.0, 20.0, 20.0)], [0.9], ["car"], CLASSES)


class FakeHost:
    """The runner as an update sees it; ``frame`` is what a camera thread calls per frame."""

    def __init__(self, detector: Any, configured_model_path: Path = Path("det.onnx")) -> None:
        self.detector = detector
        self.configured_model_path = configured_model_path
        self._frame_detect: Callable[[np.ndarray], Detections] | None = None
        self.frames_in = self.frames_out = 0

    def swap_detector(
        self, detector: Any, frame_detect: Callable[[np.ndarray], Detections] | None = None
    ) -> None:
        self.detector, self._frame_detect = detector, frame_detect

    def frame(self) -> Detections:
        self.frames_in += 1
        found = (self._frame_detect or self.detector.detect)(IMAGE)
        self.frames_out += 1
        return found


def update_command(data: bytes, *, sha256: str | None = None, chunk_bytes: int = 1000) -> CommandV1:
    body = {
        "schema": "curbwatch.command.v1",
        "correlation_id": uuid.uuid4().hex,
        "name": "update_model",
        "args": {
            "name": "det",
            "version": "2",
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "chunk_bytes": chunk_bytes,
        },
    }
    return CommandV1.model_validate({**body, "sig": sign(body, KEY)})


def send(updater: ModelUpdater, command: CommandV1, data: bytes) -> None:
    """Begin the update, then deliver its chunks (in reverse: the order must not matter)."""
    assert updater.begin(command)
    size = command.args["chunk_bytes"]
    pieces = [data[start : start + size] for start in range(0, len(data), size)]
    for index in reversed(range(len(pieces))):
        updater.receive_chunk(command.args["sha256"], index, pieces[index])


def make_updater(
    tmp_path: Path, host: FakeHost, new: Any = None
) -> tuple[ModelUpdater, list[CommandResultV1]]:
    results: list[CommandResultV1] = []
    load = load_detector if new is None else (lambda path, current: new)
    return ModelUpdater(host, tmp_path / "models", results.append, PROBATION, load), results


def test_a_sha256_mismatch_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    old = FakeDetector("1")
    host = FakeHost(old)
    updater, results = make_updater(tmp_path, host, new=FakeDetector("2"))
    data = b"x" * 2500
    command = update_command(data, sha256=hashlib.sha256(b"other").hexdigest())

    send(updater, command, data)

    assert host.detector is old
    (result,) = results
    assert (result.ok, result.result["state"]) == (False, "failed")
    assert "sha256 mismatch" in (result.error or "")
    assert not list((tmp_path / "models").rglob("*.onnx*")), "unverified bytes are not kept"


def test_a_broken_onnx_keeps_the_old_model_and_reports_failed(tmp_path: Path) -> None:
    old = FakeDetector("1")
    host = FakeHost(old)
    updater, results = make_updater(tmp_path, host)  # the real loader
    data = b"this is not an onnx file" * 100

    send(updater, update_command(data), data)

    assert host.detector is old
    (result,) = results
    assert (result.ok, result.result["state"], result.result["model_version"]) == (False, "failed", "det@1")
    assert "load error" in (result.error or "")
    assert host.frame().scores.size == 1, "the old model still detects"


def test_a_model_that_finds_nothing_is_rolled_back(tmp_path: Path) -> None:
    old, silent = FakeDetector("1"), FakeDetector("2", finds=False)
    host = FakeHost(old)
    updater, results = make_updater(tmp_path, host, new=silent)
    data = b"m" * 1500
    send(updater, update_command(data), data)
    assert host.detector is silent

    for _ in range(PROBATION.probation_frames):
        host.frame()

    assert host.detector is old
    (result,) = results
    assert (result.ok, result.result["state"], result.result["model_version"]) == (
        False,
        "rolled_back",
        "det@1",
    )
    assert "no detections on 6 of 6" in result.result["reason"]
    assert host.frame().scores.size == 1
    assert host.frames_in == host.frames_out == PROBATION.probation_frames + 1


def test_a_raising_model_is_rolled_back_without_losing_the_frame(tmp_path: Path) -> None:
    old, faulty = FakeDetector("1"), FakeDetector("2", raise_after=3)
    host = FakeHost(old)
    updater, results = make_updater(tmp_path, host, new=faulty)
    data = b"m" * 1500
    send(updater, update_command(data), data)

    found = [host.frame() for _ in range(5)]

    assert all(detections.scores.size == 1 for detections in found), "every frame got its detections"
    assert host.detector is old
    (result,) = results
    assert result.result["state"] == "rolled_back"
    assert "RuntimeError" in result.result["reason"]


def test_a_good_model_is_swapped_in_between_frames_without_dropping_any(tmp_path: Path) -> None:
    old, new = FakeDetector("1"), FakeDetector("2")
    host = FakeHost(old)
    updater, results = make_updater(tmp_path, host, new=new)
    before = [host.frame() for _ in range(4)]
    data = b"m" * 3001
    command = update_command(data)
    send(updater, command, data)
    during = [host.frame() for _ in range(PROBATION.probation_frames + 4)]

    assert host.detector is new
    assert host.frames_in == host.frames_out == len(before) + len(during)
    assert new.calls == len(during)
    assert old.calls == len(before) + PROBATION.probation_frames // PROBATION.shadow_every
    (result,) = results
    assert (result.ok, result.correlation_id) == (True, command.correlation_id)
    assert result.result["state"] == "applied"
    assert (result.result["frames"], result.result["shadow_frames"], result.result["misses"]) == (12, 6, 0)
    stored = tmp_path / "models" / command.args["sha256"] / "det.onnx"
    assert stored.read_bytes() == data


def test_update_model_is_begun_by_a_signed_command_and_answered_later(tmp_path: Path, edge: FakeEdge) -> None:
    host = FakeHost(FakeDetector("1"))
    updater, results = make_updater(tmp_path, host, new=FakeDetector("2"))
    with Outbox(tmp_path / "outbox.sqlite", OutboxConfig(), device_id="edge-1", key=KEY) as outbox:
        commands = Commands(edge, outbox, KEY, updater)
        command = update_command(b"m" * 10)
        payload = command.model_dump_json(by_alias=True).encode()
        assert commands.handle(payload) is None, "answered once settled"
        assert commands.handle(payload) is None, "a redelivery starts nothing"
        bad = update_command(b"m" * 10).model_dump(by_alias=True)
        bad["args"] = {**bad["args"], "size_bytes": -1}
        bad["sig"] = sign(bad, KEY)
        refused = commands.handle(CommandV1.model_validate(bad).model_dump_json(by_alias=True).encode())
    assert refused is not None and not refused.ok and "bad update_model args" in (refused.error or "")
    updater.receive_chunk(command.args["sha256"], 0, b"m" * 10)
    assert host.detector.card.version == "2"
    assert results == []  # still on probation


@pytest.fixture
def edge(tmp_path: Path) -> FakeEdge:
    return FakeEdge(EvidenceWriter(EvidenceConfig(root=tmp_path / "evidence")))


def test_a_real_model_is_loaded_with_the_thresholds_in_force(tmp_path: Path, yolox_nano_path: Path) -> None:
    current = OnnxDetector(DetectorConfig(model_path=yolox_nano_path))
    current.set_thresholds(0.55, {})
    copy = tmp_path / yolox_nano_path.name
    shutil.copy(yolox_nano_path, copy)

    loaded = load_detector(copy, current)

    assert loaded.threshold_settings == (0.55, {})
    assert loaded.class_names == current.class_names
