"""The COCO-style mAP used on ONNX models, and the YOLO dataset reader."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from curbwatch.training.metrics import Boxes, EvaluationError, detection_map, load_split, match_image

NAMES = ("car", "person")
# Ultralytics' 101-point interpolation ends on the sentinel recall 1 -> precision 0, so a perfect
# detector scores 0.995, as in Ultralytics.
PERFECT = 0.995


def truth(*rows: tuple[int, float, float, float, float]) -> Boxes:
    array = np.asarray(rows, np.float64).reshape(-1, 5)
    return Boxes(array[:, 1:], array[:, 0].astype(np.int64))


def predicted(*rows: tuple[int, float, float, float, float, float]) -> Boxes:
    array = np.asarray(rows, np.float64).reshape(-1, 6)
    return Boxes(array[:, 1:5], array[:, 0].astype(np.int64), array[:, 5])


def test_perfect_predictions() -> None:
    gt = [truth((0, 10, 10, 50, 40), (1, 60, 10, 70, 40)), truth((0, 0, 0, 20, 20))]
    pred = [predicted((0, 10, 10, 50, 40, 0.9), (1, 60, 10, 70, 40, 0.8)), predicted((0, 0, 0, 20, 20, 0.7))]
    result = detection_map(pred, gt, NAMES)
    assert [c.name for c in result.per_class] == ["car", "person"]
    assert result.map50 == pytest.approx(PERFECT) and result.map50_95 == pytest.approx(PERFECT)
    assert [(c.images, c.instances) for c in result.per_class] == [(2, 2), (1, 1)]


def test_ranking_of_false_positives_matters() -> None:
    gt = [truth((0, 10, 10, 50, 40))]
    true_first = predicted((0, 10, 10, 50, 40, 0.9), (0, 100, 100, 120, 120, 0.5))
    false_first = predicted((0, 10, 10, 50, 40, 0.5), (0, 100, 100, 120, 120, 0.9))
    assert detection_map([true_first], gt, NAMES).map50 == pytest.approx(PERFECT)
    assert detection_map([false_first], gt, NAMES).map50 == pytest.approx(0.5, abs=0.01)


def test_iou_thresholds_and_classes() -> None:
    gt = [truth((0, 0, 0, 100, 100))]
    # IoU 0.64: a hit at 0.50 .. 0.60 (3 of 10 thresholds).
    shifted = predicted((0, 0, 0, 100, 64, 0.9))
    result = detection_map([shifted], gt, NAMES)
    assert result.map50 == pytest.approx(PERFECT)
    assert result.map50_95 == pytest.approx(PERFECT * 3 / 10)
    wrong_class = predicted((1, 0, 0, 100, 100, 0.9))
    assert detection_map([wrong_class], gt, NAMES).map50 == 0.0  # no car predicted: AP 0, not 0.5


def test_each_truth_box_counts_once() -> None:
    gt = truth((0, 0, 0, 100, 100))
    twice = predicted((0, 0, 0, 100, 100, 0.9), (0, 1, 1, 100, 100, 0.8))
    hits = match_image(twice, gt)
    assert hits[:, 0].tolist() == [True, False]


def test_no_truth_for_a_class_leaves_it_out() -> None:
    result = detection_map([predicted((1, 0, 0, 10, 10, 0.9))], [truth((0, 0, 0, 10, 10))], NAMES)
    assert [c.name for c in result.per_class] == ["car"] and result.map50 == 0.0


def write_dataset(
    root: Path, labels: dict[str, str], names_yaml: str = "names: {0: car, 1: person}\n"
) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for name, text in labels.items():
        cv2.imwrite(str(root / "images" / "val" / f"{name}.jpg"), np.full((100, 200, 3), 90, np.uint8))
        (root / "labels" / "val" / f"{name}.txt").write_text(text)
    data = root / "data.yaml"
    data.write_text(f"train: images/train\nval: images/val\n{names_yaml}")
    return data


def test_load_split_reads_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.4\n1 0.25 0.5 0.1 0.2\n", "b": ""})
    monkeypatch.chdir(tmp_path)
    split = load_split(Path("ds/data.yaml"), "val")  # relative to the working directory
    assert split.class_names == NAMES
    a, b = split.images
    np.testing.assert_allclose(a.truth.xyxy, [[80, 30, 120, 70], [40, 40, 60, 60]])
    assert a.truth.class_ids.tolist() == [0, 1] and len(b.truth.class_ids) == 0


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        ({"a": "5 0.5 0.5 0.1 0.1\n"}, "names: [car, person]\n", r"a\.txt:1: class 5 is not in the dataset"),
        ({"a": "0 0.5 zero\n"}, "names: [car, person]\n", r"a\.txt:1: expected 'class cx cy w h'"),
        ({"a": ""}, "nc: 2\n", "'names' must list the class names"),
    ],
)
def test_load_split_bad_inputs(tmp_path: Path, labels: dict, names: str, message: str) -> None:
    data = write_dataset(tmp_path, labels, names)
    with pytest.raises(EvaluationError, match=message):
        load_split(data, "val")


def test_load_split_missing_split_and_empty_split(tmp_path: Path) -> None:
    data = write_dataset(tmp_path, {})
    with pytest.raises(EvaluationError, match="no 'test' split"):
        load_split(data, "test")
    with pytest.raises(EvaluationError, match="split 'val' has no images"):
        load_split(data, "val")
