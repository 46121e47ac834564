"""Merging detector calls from several camera threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from curbwatch.edge.detect.batching import BatchingConfig, BatchingDetector
from curbwatch.edge.detect.onnx import DetectorConfig, OnnxDetector
from curbwatch.edge.messages import Detections
from tests.factories import make_detections


@dataclass
class FakeCard:
    name: str = "fake"


@dataclass
class RecordingDetector:
    """Answers each image with one box whose x1 is the image's fill value, and records batch sizes."""

    max_batch: int | None = None
    calls: list[int] = field(default_factory=list)
    fail: bool = False
    card: FakeCard = field(default_factory=FakeCard)
    class_names: tuple[str, ...] = ("car",)

    def detect(self, image: np.ndarray) -> Detections:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        self.calls.append(len(images))
        if self.fail:
            raise RuntimeError("session.run failed")
        time.sleep(0.005)
        return [make_detections([(float(img[0, 0, 0]), 0, 50, 50)], labels="car") for img in images]


def run_cameras(shared: BatchingDetector, cameras: int, frames: int) -> dict[int, list[float]]:
    seen: dict[int, list[float]] = {camera: [] for camera in range(cameras)}

    def camera(index: int) -> None:
        for frame in range(frames):
            value = index * 10 + frame % 10
            result = shared.detect(np.full((8, 8, 3), value, np.uint8))
            seen[index].append(float(result.xyxy[0, 0]) - value)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(cameras)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return seen


def test_concurrent_calls_are_batched_and_answers_reach_the_right_camera() -> None:
    fake = RecordingDetector()
    shared = BatchingDetector(fake, BatchingConfig(window_ms=20, max_batch=4))  # type: ignore[arg-type]
    seen = run_cameras(shared, cameras=6, frames=10)
    shared.close()
    assert all(offsets == [0.0] * 10 for offsets in seen.values())  # each camera got its own boxes
    assert sum(fake.calls) == 60
    assert max(fake.calls) > 1 and max(fake.calls) <= 4
    assert shared.batch_sizes == fake.calls


@pytest.mark.parametrize(
    ("window_ms", "max_batch", "model_batch", "enabled"),
    [(0, 8, None, False), (5, 8, 1, False), (5, 8, None, True), (5, 8, 4, True)],
)
def test_batching_only_where_it_can_pay(
    window_ms: float, max_batch: int, model_batch: int | None, enabled: bool
) -> None:
    shared = BatchingDetector(
        RecordingDetector(max_batch=model_batch),  # type: ignore[arg-type]
        BatchingConfig(window_ms=window_ms, max_batch=max_batch),
    )
    assert shared.enabled is enabled
    if model_batch:
        assert shared.max_batch <= model_batch
    shared.close()


def test_a_failed_batch_fails_every_caller_in_it() -> None:
    shared = BatchingDetector(RecordingDetector(fail=True), BatchingConfig(window_ms=5))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"session\.run failed"):
        shared.detect(np.zeros((8, 8, 3), np.uint8))
    shared.close()


def test_fixed_batch_model_passes_straight_through(yolox_nano_path: Path, data_dir: Path) -> None:
    import cv2

    detector = OnnxDetector(DetectorConfig(model_path=yolox_nano_path))
    shared = BatchingDetector(detector, BatchingConfig(window_ms=5))
    image = cv2.imread(str(data_dir / "qengineering-cctv" / "parking.jpg"))
    direct, through = detector.detect(image), shared.detect(image)
    assert not shared.enabled and shared.batch_sizes == []
    assert np.array_equal(direct.xyxy, through.xyxy)
