"""The committed demo detector (``street-demo@1``) finds the violators of a held-out demo scene.

Seeds 1 and 2 are the demo's two cameras; ``curbwatch train synth-data`` never renders them, so
these frames were never seen in training.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from curbwatch.edge.detect.onnx import DetectorConfig, OnnxDetector
from curbwatch.edge.synth.layout import Camera
from curbwatch.edge.synth.script import plan_scenario
from curbwatch.edge.synth.truth import ground_truth, preview_index
from curbwatch.training.metrics import box_iou
from curbwatch.training.registry import Registry, resolve_model_path
from curbwatch.training.synth_data import DEMO_WH, render_samples

DEMO_SEEDS = (1, 2)


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    path = resolve_model_path("street-demo@1", Registry())
    assert path.resolve().is_relative_to(Registry().root.resolve()), f"{path} is not committed under models/"
    return OnnxDetector(DetectorConfig(model_path=path))


def test_the_committed_model_is_small_and_knows_the_scene_classes(detector: OnnxDetector) -> None:
    assert detector.config.model_path.stat().st_size < 5_000_000
    assert detector.card.name == "street-demo" and detector.card.version == "1"
    assert set(detector.class_names) >= {"car", "motorcycle", "dining table", "umbrella", "bin", "person"}


@pytest.mark.parametrize("seed", DEMO_SEEDS)
def test_finds_every_violator_on_a_held_out_demo_frame(detector: OnnxDetector, seed: int) -> None:
    scenario = plan_scenario(120.0, seed, 5.0)
    truth = ground_truth(scenario, Camera(DEMO_WH), "demo", datetime.now(UTC))
    index = preview_index(truth)  # the frame with the most violations under way
    active = [e for e in truth["episodes"] if e["start_frame"] <= index <= e["end_frame"]]
    kinds = {e["what"] for e in active}
    assert {"parked car", "vending stall", "scooter on the hatched strip"} <= kinds
    (sample,) = render_samples(scenario, DEMO_WH, [index])
    found = detector.detect(sample.image)
    boxes = {box["track_id"]: box for box in sample.boxes}
    for episode in active:
        for track_id in episode["track_ids"]:
            expected = boxes[track_id]
            same_class = found.class_ids == detector.class_names.index(expected["label"])
            ious = box_iou(np.asarray([expected["xyxy"]], np.float32), found.xyxy[same_class])
            best = float(ious.max()) if ious.size else 0.0
            assert best >= 0.5, f"{episode['what']}: {expected['label']} #{track_id} best IoU {best:.2f}"
