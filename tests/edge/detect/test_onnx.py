"""OnnxDetector: parity with independent references on real images, thresholds, NMS, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from hashlib import sha256
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from curbwatch.edge.detect.card import ModelCardError
from curbwatch.edge.detect.families import Candidates
from curbwatch.edge.detect.onnx import (
    DetectorConfig,
    DetectorConfigError,
    DetectorError,
    ModelLoadError,
    OnnxDetector,
    UnsupportedModelError,
    nms_by_class,
)
from tests.conftest import REPO_ROOT

PARITY_IMAGES = [
    "frigate-cctv/ground-plane.jpg",
    "qengineering-cctv/parking.jpg",
    "roboflow-inference-assets/truck.jpg",
]


def read_image(data_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(data_dir / name))
    assert image is not None, f"cannot read {name}"
    return image


@pytest.fixture(scope="module")
def yolox(yolox_nano_path: Path) -> OnnxDetector:
    return OnnxDetector(DetectorConfig(model_path=yolox_nano_path, intra_op_threads=2))


# ---- independent YOLOX reference, written from the data README, loops on purpose -------------


def reference_yolox(session: ort.InferenceSession, image: np.ndarray, thr: float, iou: float) -> list[tuple]:
    size = 416
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    padded = np.full((size, size, 3), 114.0, np.float32)
    padded[: int(h * r), : int(w * r)] = cv2.resize(
        image, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR
    )
    blob = padded.transpose(2, 0, 1)[None].copy()  # BGR, raw 0..255
    rows = session.run(None, {"images": blob})[0][0]
    found, index = [], 0
    for stride in (8, 16, 32):
        for gy in range(size // stride):
            for gx in range(size // stride):
                row = rows[index]
                index += 1
                cls = int(np.argmax(row[5:]))
                score = float(row[4] * row[5 + cls])
                if score < thr:
                    continue
                cx, cy = (row[0] + gx) * stride, (row[1] + gy) * stride
                bw, bh = np.exp(row[2]) * stride, np.exp(row[3]) * stride
                box = [(cx - bw / 2) / r, (cy - bh / 2) / r, (cx + bw / 2) / r, (cy + bh / 2) / r]
                found.append((score, cls, box))
    # YOLOX's demo runs NMS on unclipped boxes; clip the survivors to the frame afterwards.
    return [
        (score, cls, [min(max(v, 0.0), lim) for v, lim in zip(box, (w, h, w, h), strict=True)])
        for score, cls, box in reference_nms(found, iou)
    ]


def box_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(found: list[tuple], iou: float) -> list[tuple]:
    kept: list[tuple] = []
    for score, cls, box in sorted(found, key=lambda item: -item[0]):
        if all(k[1] != cls or box_iou(box, k[2]) <= iou for k in kept):
            kept.append((score, cls, box))
    return kept


@pytest.mark.parametrize("name", PARITY_IMAGES)
def test_yolox_matches_reference(
    data_dir: Path, yolox_nano_path: Path, yolox: OnnxDetector, name: str
) -> None:
    image = read_image(data_dir, name)
    session = ort.InferenceSession(str(yolox_nano_path), providers=["CPUExecutionProvider"])
    want = reference_yolox(session, image, thr=0.3, iou=0.45)
    got = yolox.detect(image)
    assert len(got) == len(want) > 0
    for (score, cls, box), xyxy, got_score, got_cls in zip(
        want, got.xyxy, got.scores, got.class_ids, strict=True
    ):
        assert got_cls == cls
        assert got_score == pytest.approx(score, abs=1e-4)
        np.testing.assert_allclose(xyxy, box, atol=1.0)


def test_yolox_finds_parked_cars(data_dir: Path, yolox: OnnxDetector) -> None:
    detections = yolox.detect(read_image(data_dir, "qengineering-cctv/parking.jpg"))
    counts = Counter(detections.labels)
    assert counts["car"] >= 5
    assert counts["person"] >= 3
    assert yolox.card.name == "yolox-nano"
    assert yolox.class_names[2] == "car"
    assert yolox.max_batch == 1


def test_batch_and_threads_match_single_calls(data_dir: Path, yolox: OnnxDetector) -> None:
    images = [read_image(data_dir, name) for name in PARITY_IMAGES]
    single = [yolox.detect(image) for image in images]
    batch = yolox.detect_batch(images)
    assert yolox.last_timings is not None and yolox.last_timings.batch_size == 3
    results: dict[int, list] = {}

    def worker(slot: int) -> None:
        results[slot] = [yolox.detect(images[(slot + k) % 3]) for k in range(3)]

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for slot, found in results.items():
        for k, dets in enumerate(found):
            np.testing.assert_array_equal(dets.xyxy, single[(slot + k) % 3].xyxy)
    for one, many in zip(single, batch, strict=True):
        np.testing.assert_array_equal(one.xyxy, many.xyxy)
        np.testing.assert_array_equal(one.class_ids, many.class_ids)


def test_per_class_thresholds(data_dir: Path, yolox_nano_path: Path, yolox: OnnxDetector) -> None:
    image = read_image(data_dir, "qengineering-cctv/parking.jpg")
    base = yolox.detect(image)
    strict = OnnxDetector(
        DetectorConfig(model_path=yolox_nano_path, class_thresholds={"person": 0.99, "car": 0.1})
    ).detect(image)
    assert "person" in base.labels and "person" not in strict.labels
    assert strict.labels.count("car") >= base.labels.count("car")
    for label, score in zip(strict.labels, strict.scores, strict=True):
        assert score >= (0.1 if label == "car" else 0.3)
    with pytest.raises(DetectorConfigError, match="does not have: wheelie bin"):
        OnnxDetector(DetectorConfig(model_path=yolox_nano_path, class_thresholds={"wheelie bin": 0.5}))


def candidates(rows: list[tuple[float, float, float, float, float, int]]) -> Candidates:
    array = np.asarray(rows, np.float32).reshape(-1, 6)
    return Candidates(array[:, :4], array[:, 4], array[:, 5].astype(np.int32))


@pytest.mark.parametrize(
    ("rows", "max_detections", "kept"),
    [
        ([(0, 0, 10, 10, 0.9, 0), (1, 1, 11, 11, 0.8, 1)], 10, [0, 1]),  # other class: both survive
        ([(0, 0, 10, 10, 0.8, 0), (1, 1, 11, 11, 0.9, 0)], 10, [1]),  # same class: best one
        ([(0, 0, 10, 10, 0.7, 0), (20, 20, 30, 30, 0.9, 0), (40, 0, 50, 9, 0.8, 2)], 2, [1, 2]),
        ([], 10, []),
    ],
)
def test_class_aware_nms(rows: list, max_detections: int, kept: list[int]) -> None:
    assert nms_by_class(candidates(rows), 0.45, max_detections).tolist() == kept


def test_timings_split_the_call_and_input_tensor_is_what_the_model_sees(
    data_dir: Path, yolox: OnnxDetector, yolox_nano_path: Path
) -> None:
    frame = cv2.resize(read_image(data_dir, "qengineering-cctv/parking.jpg"), (1280, 720))
    detections = yolox.detect(frame)
    timings = yolox.last_timings
    assert timings is not None and timings.batch_size == 1
    assert min(timings.preprocess_s, timings.inference_s, timings.postprocess_s) > 0
    tensor = yolox.input_tensor([frame])
    assert tensor.shape == (1, 3, 416, 416) and tensor.dtype == np.float32
    # The top-left letterbox leaves the bottom rows as padding (720/1280 * 416 = 234 rows of image).
    assert np.all(tensor[0, :, 240:, :] == 114)
    raw = ort.InferenceSession(str(yolox_nano_path), providers=["CPUExecutionProvider"])
    output = raw.run(None, {raw.get_inputs()[0].name: tensor})[0]
    objectness = output[0, :, 4]
    assert (objectness > 0.3).sum() >= len(detections) > 0


# ---- bad inputs -------------------------------------------------------------------------------


def tiny_onnx(path: Path, out_shape: list[int]) -> Path:
    helper = pytest.importorskip("onnx.helper", reason="the onnx package (train extra) builds the tiny model")
    import onnx

    shape = [1, 3, 64, 64]
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, out_shape)],
        [helper.make_tensor("shape", onnx.TensorProto.INT64, [len(out_shape)], out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


TINY_CARD = "name: tiny\nversion: '1'\nfamily: yolox\ninput_size_hw: [64, 64]\nclass_names: [car]\n"


def test_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"missing\.onnx: expected an ONNX file, found nothing"):
        OnnxDetector(DetectorConfig(model_path=tmp_path / "missing.onnx"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ModelLoadError, match=r"junk\.onnx: expected an ONNX model onnxruntime can load"):
        OnnxDetector(DetectorConfig(model_path=junk))


def test_unknown_outputs_and_missing_card(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx", [1, 7, 3])
    with pytest.raises(UnsupportedModelError, match=r"no model card found .*found keys: none"):
        OnnxDetector(DetectorConfig(model_path=model, models_dir=tmp_path / "models"))
    (tmp_path / "tiny.card.yaml").write_text(TINY_CARD)
    with pytest.raises(
        UnsupportedModelError, match=r"tiny\.onnx: yolox output .* must be \[N, 84, 6\], found \[1, 7, 3\]"
    ):
        OnnxDetector(DetectorConfig(model_path=model))
    (tmp_path / "tiny.card.yaml").write_text(TINY_CARD.replace("[car]", "[car, car]"))
    with pytest.raises(ModelCardError, match="unique"):
        OnnxDetector(DetectorConfig(model_path=model))


def test_tiny_model_with_matching_outputs_detects_nothing(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx", [1, 84, 6])  # 8x8 + 4x4 + 2x2 anchors, 1 class
    (tmp_path / "tiny.card.yaml").write_text(TINY_CARD)
    detector = OnnxDetector(DetectorConfig(model_path=model))
    assert len(detector.detect(np.zeros((48, 80, 3), np.uint8))) == 0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
        "frame",
    ],
)
def test_bad_images_are_rejected(yolox: OnnxDetector, image: object) -> None:
    with pytest.raises(DetectorError, match="expected a"):
        yolox.detect(image)  # type: ignore[arg-type]


def test_unavailable_providers_are_dropped(yolox_nano_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = DetectorConfig(
        model_path=yolox_nano_path, providers=("NoSuchExecutionProvider", "CPUExecutionProvider")
    )
    with caplog.at_level(logging.WARNING):
        detector = OnnxDetector(config)
    assert detector.providers == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider" in caplog.text


# ---- Ultralytics parity (train extra) ---------------------------------------------------------

TOOL = REPO_ROOT / "tools" / "make_ultralytics_model.py"
ULTRA_CONF, ULTRA_IOU = 0.15, 0.45
needs_ultralytics = pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None,
    reason="ultralytics is not installed: pip install -e '.[train]' for the Ultralytics parity tests",
)


@pytest.fixture(scope="session", params=["yolov8n.yaml", "yolo11n.yaml"])
def ultralytics_export(request: pytest.FixtureRequest, data_dir: Path) -> tuple[Path, dict]:
    """A randomly initialised Ultralytics model exported to ONNX, with Ultralytics' predictions.

    Cached under build/ keyed by the tool's source, so it is rebuilt only when the tool changes.
    """
    cfg = request.param
    images = [str(data_dir / name) for name in PARITY_IMAGES]
    key = sha256(TOOL.read_bytes() + repr((cfg, images, ULTRA_CONF, ULTRA_IOU)).encode()).hexdigest()[:12]
    folder = REPO_ROOT / "build" / "test-models" / f"{Path(cfg).stem}-{key}"
    model, predictions = folder / f"{Path(cfg).stem}_320.onnx", folder / "predictions.json"
    if not predictions.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "false",
            "YOLO_CONFIG_DIR": str(REPO_ROOT / "build" / "ultralytics"),
        }
        command = [sys.executable, str(TOOL), "--cfg", cfg, "--imgsz", "320", "--out", str(model)]
        command += ["--names", str(data_dir / "yolox-nano" / "coco_classes.txt"), "--predict", *images]
        command += ["--conf", str(ULTRA_CONF), "--iou", str(ULTRA_IOU), "--json", str(predictions)]
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    return model, json.loads(predictions.read_text())


@pytest.mark.train
@needs_ultralytics
@pytest.mark.parametrize("name", PARITY_IMAGES)
def test_ultralytics_matches_its_predict(
    data_dir: Path, ultralytics_export: tuple[Path, dict], name: str
) -> None:
    model, predictions = ultralytics_export
    want = predictions[str(data_dir / name)]
    detector = OnnxDetector(
        DetectorConfig(model_path=model, score_threshold=ULTRA_CONF, nms_iou=ULTRA_IOU, max_detections=300)
    )
    assert detector.card.family == "ultralytics"
    assert detector.card.input_size_hw == (320, 320)
    assert detector.class_names[:3] == ("person", "bicycle", "car")
    got = detector.detect(read_image(data_dir, name))
    assert len(got) == len(want["scores"]) > 0
    # Match each Ultralytics box to ours of the same class and score (ties may come in any order).
    unused = set(range(len(got)))
    for box, score, cls in zip(want["xyxy"], want["scores"], want["class_ids"], strict=True):
        options = [i for i in unused if got.class_ids[i] == cls and abs(got.scores[i] - score) < 1e-4]
        assert options, f"no box of class {cls} with score {score:.4f}"
        best = min(options, key=lambda i: float(np.abs(got.xyxy[i] - box).max()))
        np.testing.assert_allclose(got.xyxy[best], box, atol=0.5)
        unused.remove(best)


@pytest.mark.train
@needs_ultralytics
def test_dynamic_batch_runs_once_and_matches(data_dir: Path, ultralytics_export: tuple[Path, dict]) -> None:
    detector = OnnxDetector(DetectorConfig(model_path=ultralytics_export[0], score_threshold=ULTRA_CONF))
    assert detector.max_batch is None
    images = [read_image(data_dir, name) for name in PARITY_IMAGES]
    single = [detector.detect(image) for image in images]
    batch = detector.detect_batch(images)
    assert detector.last_timings is not None and detector.last_timings.batch_size == 3
    for one, many in zip(single, batch, strict=True):
        assert one.labels == many.labels
        np.testing.assert_allclose(one.xyxy, many.xyxy, atol=0.01)
