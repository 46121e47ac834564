"""Parity: the edge detector reads a curbwatch export from its metadata alone and finds Ultralytics' boxes.

Tolerance: every box Ultralytics' ``predict`` reports on the exported ONNX has a box of ours of the same
class, with a score within 1e-4 and corners within 0.5 px; the counts are equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from curbwatch.edge.detect.onnx import DetectorConfig, OnnxDetector
from tests.conftest import REPO_ROOT
from tests.edge.detect.test_onnx import PARITY_IMAGES, needs_ultralytics
from tests.training.conftest import ULTRALYTICS_ENV

CONF, IOU = 0.15, 0.45


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("parity")
    images = [str(data_dir / name) for name in PARITY_IMAGES]
    # yolov8n.yaml has 80 classes: the COCO names go with it.
    names = data_dir / "yolox-nano" / "coco_classes.txt"
    command = [
        sys.executable,
        "-m",
        "tests.training.ultralytics_parity",
        "--out",
        str(out),
        "--names",
        str(names),
    ]
    command += ["--imgsz", "320"]
    command += ["--conf", str(CONF), "--iou", str(IOU), *images]
    env = {**os.environ, **ULTRALYTICS_ENV}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "parity.onnx", json.loads((out / "predictions.json").read_text())


@pytest.mark.train
@needs_ultralytics
def test_export_metadata_is_enough_for_the_edge(exported: tuple[Path, dict], tmp_path: Path) -> None:
    import onnx

    model, _ = exported
    detector = OnnxDetector(DetectorConfig(model_path=model, models_dir=tmp_path))  # no card anywhere
    card = detector.card
    assert (card.name, card.version, card.family) == ("parity", "7", "ultralytics")
    assert card.class_names[:3] == ("person", "bicycle", "car") and len(card.class_names) == 80
    assert card.input_size_hw == (320, 320)
    assert "trained on dataset card " + "ab" * 32 in (card.source or "")
    metadata = {prop.key: prop.value for prop in onnx.load(str(model)).metadata_props}
    assert json.loads(metadata["class_names"]) == list(card.class_names)
    assert json.loads(metadata["input_size_hw"]) == [320, 320]
    assert metadata["family"] == "ultralytics" and metadata["training_data"] == "ab" * 32
    assert metadata["parent"] == "yolov8n.yaml" and metadata["parent_sha256"] == ""
    assert metadata["ultralytics_version"].startswith("8.") and detector.max_batch is None


@pytest.mark.train
@needs_ultralytics
@pytest.mark.parametrize("name", PARITY_IMAGES)
def test_edge_boxes_match_ultralytics_predict(
    exported: tuple[Path, dict], data_dir: Path, tmp_path: Path, name: str
) -> None:
    model, predictions = exported
    want = predictions[str(data_dir / name)]
    detector = OnnxDetector(
        DetectorConfig(
            model_path=model, models_dir=tmp_path, score_threshold=CONF, nms_iou=IOU, max_detections=300
        )
    )
    got = detector.detect(cv2.imread(str(data_dir / name)))
    assert len(got) == len(want["scores"]) > 0
    unused = set(range(len(got)))
    for box, score, cls in zip(want["xyxy"], want["scores"], want["class_ids"], strict=True):
        options = [i for i in unused if got.class_ids[i] == cls and abs(got.scores[i] - score) < 1e-4]
        assert options, f"no box of class {cls} with score {score:.4f}"
        best = min(options, key=lambda i: float(np.abs(got.xyxy[i] - box).max()))
        np.testing.assert_allclose(got.xyxy[best], box, atol=0.5)
        unused.remove(best)
