"""A model applied over the air is kept across a restart; edge.yaml can still take the box back."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from curbwatch.edge.detect.card import file_sha256
from curbwatch.edge.detect.onnx import DetectorConfig, ModelLoadError
from curbwatch.edge.rollout import CURRENT_FILE, AppliedModel, ModelUpdater, startup_detector
from curbwatch.schema.protocol import CommandResultV1
from tests.edge.test_rollout import PROBATION, FakeDetector, FakeHost, send, update_command

APPLIED_AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


class Box:
    """One edge box's state folder and edge.yaml model, across updates and restarts."""

    def __init__(self, tmp_path: Path) -> None:
        self.store = tmp_path / "state" / "models"
        self.config = DetectorConfig(model_path=tmp_path / "configured.onnx")
        self.config.model_path.write_bytes(b"the configured model")
        self.host = FakeHost(FakeDetector("1"), self.config.model_path)
        self.results: list[CommandResultV1] = []

    def update(self, data: bytes, new: FakeDetector) -> CommandResultV1:
        """Deliver a model and camera frames until its probation is over."""
        updater = ModelUpdater(
            self.host,
            self.store,
            self.results.append,
            PROBATION,
            lambda path, current: new,
            lambda: APPLIED_AT,
        )
        send(updater, update_command(data), data)
        for _ in range(PROBATION.probation_frames):
            self.host.frame()
        return self.results[-1]

    def restart(self, config: DetectorConfig | None = None) -> Any:
        """The detector the box starts with; the fake keeps the config it was built from."""

        def load(config: DetectorConfig) -> FakeDetector:
            detector = FakeDetector(config.model_path.name)
            detector.config = config
            return detector

        return startup_detector(config or self.config, self.store, load)

    def stored(self, data: bytes) -> Path:
        return self.store / update_command(data).args["sha256"] / "det.onnx"


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_an_applied_model_survives_a_restart(box: Box, caplog: pytest.LogCaptureFixture) -> None:
    data = b"m" * 2500
    assert box.update(data, FakeDetector("2")).result["state"] == "applied"

    record = json.loads((box.store / CURRENT_FILE).read_text())
    assert record == {
        "name": "det",
        "version": "2",
        "sha256": update_command(data).args["sha256"],
        "path": str(box.stored(data).resolve()),
        "applied_at": "2026-11-27T09:30:00Z",
        "configured_path": str(box.config.model_path.resolve()),
        "configured_sha256": update_command(b"the configured model").args["sha256"],
    }
    with caplog.at_level(logging.INFO, logger="curbwatch.edge.rollout"):
        detector = box.restart()

    assert detector.config.model_path == box.stored(data).resolve()
    assert "restored model det@2" in caplog.text
    assert detector.threshold_settings == (0.3, {})


def test_a_rolled_back_model_is_not_kept_and_the_last_applied_one_is(box: Box) -> None:
    kept, silent = b"k" * 1500, b"s" * 1500
    box.update(kept, FakeDetector("2"))
    record = (box.store / CURRENT_FILE).read_bytes()

    assert box.update(silent, FakeDetector("3", finds=False)).result["state"] == "rolled_back"

    assert (box.store / CURRENT_FILE).read_bytes() == record
    assert box.restart().config.model_path == box.stored(kept).resolve()


def test_a_rolled_back_first_update_leaves_the_configured_model(box: Box) -> None:
    assert box.update(b"s" * 1500, FakeDetector("2", finds=False)).result["state"] == "rolled_back"

    assert not (box.store / CURRENT_FILE).exists()
    assert box.restart().config.model_path == box.config.model_path


@pytest.mark.parametrize("damage", ["tamper", "delete"])
def test_an_altered_or_missing_applied_model_falls_back_to_the_configured_one(
    box: Box, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    data = b"m" * 2500
    box.update(data, FakeDetector("2"))
    if damage == "tamper":
        box.stored(data).write_bytes(b"M" + data[1:])
    else:
        box.stored(data).unlink()

    with caplog.at_level(logging.WARNING, logger="curbwatch.edge.rollout"):
        detector = box.restart()

    assert detector.config.model_path == box.config.model_path
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert ("has sha256" if damage == "tamper" else "is missing") in warning.getMessage()
    assert "using the configured model" in warning.getMessage()


def test_an_unreadable_record_or_unloadable_model_does_not_stop_the_start(
    box: Box, caplog: pytest.LogCaptureFixture
) -> None:
    data = b"m" * 2500
    box.update(data, FakeDetector("2"))
    stored = box.stored(data).resolve()

    def refuse_the_applied_model(config: DetectorConfig) -> Any:
        if config.model_path == stored:
            raise ModelLoadError(f"model file {stored}: onnxruntime refused it")
        return FakeDetector("1")

    with caplog.at_level(logging.WARNING, logger="curbwatch.edge.rollout"):
        detector = startup_detector(box.config, box.store, refuse_the_applied_model)
        (box.store / CURRENT_FILE).write_text("{not json")
        restarted = box.restart()

    assert detector.card.version == "1"
    assert restarted.config.model_path == box.config.model_path
    assert [record.levelno for record in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "onnxruntime refused it" in caplog.records[0].getMessage()
    assert "unreadable" in caplog.records[1].getMessage()


def test_a_changed_configured_model_wins(box: Box, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box.update(b"m" * 2500, FakeDetector("2"))
    other = DetectorConfig(model_path=tmp_path / "chosen.onnx")
    other.model_path.write_bytes(b"a model the operator chose")

    with caplog.at_level(logging.INFO, logger="curbwatch.edge.rollout"):
        by_path = box.restart(other)
        box.config.model_path.write_bytes(b"the configured model, replaced in place")
        in_place = box.restart()

    assert by_path.config.model_path == other.model_path
    assert in_place.config.model_path == box.config.model_path
    messages = [record.getMessage() for record in caplog.records]
    assert "detector.model_path changed" in messages[0]
    assert "configured model" in messages[1] and "changed since" in messages[1]
    assert all(record.levelno == logging.INFO for record in caplog.records), "a deliberate change"


def test_a_real_applied_model_is_restored_by_the_default_loader(
    tmp_path: Path, yolox_nano_path: Path
) -> None:
    sha256 = file_sha256(yolox_nano_path)
    stored = tmp_path / "models" / sha256 / yolox_nano_path.name  # the card is found by the stem
    stored.parent.mkdir(parents=True)
    shutil.copy(yolox_nano_path, stored)
    applied = AppliedModel(
        name="yolox_nano",
        version="2",
        sha256=sha256,
        path=stored,
        applied_at=APPLIED_AT,
        configured_path=yolox_nano_path,
        configured_sha256=sha256,
    )
    (tmp_path / "models" / CURRENT_FILE).write_text(applied.model_dump_json())

    detector = startup_detector(DetectorConfig(model_path=yolox_nano_path), tmp_path / "models")

    assert detector.config.model_path == stored
    assert detector.card.sha256 == sha256
